# Sourced by run.sh and estimators.sh. pool: run "LOG COMMAND..." lines from stdin, at most 2 at a time,
# each command echoed first; exits 1 naming $LOGS if any failed.
pool() {
  local log cmd failed=0
  while read -r log cmd; do
    while [ "$(jobs -rp | wc -l)" -ge 2 ]; do wait -n || failed=1; done
    echo "+ $cmd > $log"
    bash -c "$cmd" > "$log" 2>&1 &
  done
  while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || failed=1; done
  if [ "$failed" = 1 ]; then echo "a command failed; see the logs in $LOGS" >&2; exit 1; fi
}
