"""The gym_cards games (NumberLine, EZPoints, Points24, Blackjack) drawn with PIL, and their EnvModules."""

from agentrl.envs.gym_cards.module import BlackjackModule, EZPointsModule, NumberLineModule, Points24Module

__all__ = ["NumberLineModule", "EZPointsModule", "Points24Module", "BlackjackModule"]
