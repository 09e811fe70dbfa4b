"""A NumberLine whose envs on rank 1 step slowly: for the slow-rank test."""

import os
import time

from agentrl.envs.gym_cards import NumberLineModule


class SlowOnRank1(NumberLineModule):
    def step(self, actions):
        if os.environ.get("LOCAL_RANK") == "1":
            time.sleep(float(os.environ.get("AGENTRL_TEST_DELAY", "20")))
        return super().step(actions)
