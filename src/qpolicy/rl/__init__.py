"""Reinforcement-learning policy search: HAQ's bit-allocation environment and a DDPG agent (used by ARQ)."""
