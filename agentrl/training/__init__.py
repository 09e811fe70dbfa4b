"""The run machinery under the commands: :mod:`.build` (a run's parts from its config), :mod:`.learner` (the PPO
update on Fabric), :mod:`.distributed` (strategies, a barrier that names slow ranks), :mod:`.checkpoint` and
:mod:`.resume` (atomic checkpoints, exact resume), :mod:`.signals` (SIGTERM/SIGINT), :mod:`.report`
(TensorBoard, progress, the closing table), :mod:`.peakmem` and :mod:`.heldout` (evaluation during fit)."""
