"""Run settings: sizes, rounds and time budgets for full and --quick runs."""

import os
from dataclasses import dataclass, field


@dataclass
class Config:
    quick: bool = False
    out_dir: str = "bench/results"
    work_dir: str = ""
    peers_dir: str = os.path.expanduser("~/.cache/jitauth-bench/peers")
    engines: tuple = ()
    seed: int = 1
    install_peers: bool = True
    # matcher suite: (accounts, rules) per size
    matcher_sizes: list = field(default_factory=list)
    requests: int = 0
    rounds: int = 0
    engine_seconds: float = 0.0
    check_seconds: float = 0.0
    # grpc suite
    grpc_rates: list = field(default_factory=list)
    step_seconds: int = 0
    connections: int = 0
    streams: int = 0
    grpc_rounds: int = 0
    # batch suite
    batch_sizes: list = field(default_factory=list)
    # scale suite
    scale_accounts: list = field(default_factory=list)

    @classmethod
    def make(cls, quick: bool, **overrides) -> "Config":
        if quick:
            config = cls(
                quick=True,
                matcher_sizes=[(10_000, 100), (100_000, 1_000)],
                requests=4_000, rounds=3, engine_seconds=3.0,
                check_seconds=10.0,
                grpc_rates=[200, 500], step_seconds=3, connections=8,
                streams=4, grpc_rounds=1,
                batch_sizes=[100, 1_000],
                scale_accounts=[10_000, 100_000],
            )
        else:
            config = cls(
                quick=False,
                matcher_sizes=[(10_000, 100), (100_000, 1_000),
                               (1_000_000, 10_000)],
                requests=20_000, rounds=5, engine_seconds=15.0,
                check_seconds=60.0,
                grpc_rates=[250, 500, 1_000, 2_000], step_seconds=10,
                connections=16, streams=8, grpc_rounds=3,
                batch_sizes=[100, 1_000, 10_000],
                scale_accounts=[10_000, 100_000, 1_000_000, 10_000_000],
            )
        for key, value in overrides.items():
            if value is not None:
                setattr(config, key, value)
        return config
