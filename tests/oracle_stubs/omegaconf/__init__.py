"""Test-only stand-in for omegaconf (upstream states.py only converts training args)."""


class OmegaConf:
    @staticmethod
    def to_container(cfg, resolve=True):
        return cfg
