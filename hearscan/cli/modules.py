"""`hearscan modules`: the registered model families (hear_modules.registry), for people and scripts."""

from __future__ import annotations

from hear_modules import registry


def register(subparsers) -> None:
    p = subparsers.add_parser("modules", help="list the registered HEAR modules (model families)",
                              description="The families hearscan ships, with their sizes, scans and checkpoint "
                              "variables.  --names and --smallest print what scripts need.")
    p.add_argument("--names", action="store_true", help="only the names, one per line")
    p.add_argument("--smallest", metavar="NAME", default=None,
                   help="the `-o KEY=VALUE` options of NAME's smallest model (what the results scripts extract)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from hearscan_core.errors import UserFacingError

    if args.smallest:
        family = registry.get(args.smallest)
        if family is None:
            raise UserFacingError(f"{args.smallest!r} is not a registered family; choose from {', '.join(registry.names())}")
        print(" ".join(f"-o {k}={v}" for k, v in family.smallest.items()))
        return 0
    if args.names:
        print("\n".join(registry.names()))
        return 0
    print(f"{'name':<9} {'sizes':<17} {'scans':<15} {'checkpoint from the environment':<50} what")
    for f in registry.FAMILIES:
        env = f.checkpoint_env + (f" or ${f.model_dir_env}" if f.model_dir_env else "")
        print(f"{f.name:<9} {'/'.join(f.sizes) or '-':<17} {','.join(f.ops) or '-':<15} {env:<50} {f.title}")
    return 0
