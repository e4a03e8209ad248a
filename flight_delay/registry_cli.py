"""The registry's command line, ``python -m flight_delay.registry`` (or ``-m flight_delay.registry_cli``):
read the champion history and record decisions, each a compare-and-set."""

from __future__ import annotations

from flight_delay.registry import MODES, ModelRegistry


def main(argv: list[str] | None = None) -> int:
    """``python -m flight_delay.registry {history,state,promote,rollback,challenge,retire}``."""
    import argparse
    import sys

    from flight_delay.model import MODEL_NAME
    from flight_delay.paths import DataLayout

    parser = argparse.ArgumentParser(
        prog="python -m flight_delay.registry",
        description="Which model serves: every change is recorded in the history and applied only if the "
        "registry is still in the state it was decided against (else: an error, nothing written).",
    )
    parser.add_argument(
        "--home", default=None, help="BentoML home (default: $FLIGHT_DELAY_DATA_DIR/bentoml or data/bentoml)"
    )
    parser.add_argument("--model", default=MODEL_NAME)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("history", help="every decision, oldest first, one JSON object a line")
    sub.add_parser("state", help="champion, challenger, barred models and earlier champions, as JSON")
    read_expect = (
        "; omitted, the current {0} is read and expected: reading and writing are two steps, and a change "
        "made by someone else in between fails with a conflict instead of being overwritten"
    )
    promote = sub.add_parser("promote", help="make TAG (name:version) the champion")
    promote.add_argument("tag")
    promote.add_argument("--reason", required=True)
    promote.add_argument("--expect", required=True, help="the current champion ('none' before the first)")
    promote.add_argument(
        "--no-guard",
        action="store_true",
        help="do not score the replaced champion in shadow afterwards (by default it is, so that the rollback "
        "sensor can roll the new champion back if it does worse live)",
    )
    rollback = sub.add_parser("rollback", help="restore an earlier champion; the current one is barred")
    rollback.add_argument(
        "--to", dest="to_tag", default=None, help="which earlier champion (default: the most recent one not barred)"
    )
    rollback.add_argument("--reason", required=True)
    rollback.add_argument(
        "--expect", default=None, help="the champion to roll back from" + read_expect.format("champion")
    )
    challenge = sub.add_parser("challenge", help="make TAG the challenger of the champion")
    challenge.add_argument("tag")
    challenge.add_argument("--mode", choices=MODES, required=True)
    challenge.add_argument("--share", type=float, default=None, help="split: share of flights (0 to 1); shadow: 1")
    challenge.add_argument("--reason", required=True)
    challenge.add_argument("--force", action="store_true", help="also a rejected, rolled-back or retired model")
    challenge.add_argument("--expect", default=None, help="the current champion" + read_expect.format("champion"))
    retire = sub.add_parser("retire", help="remove the challenger and bar it")
    retire.add_argument("--reason", required=True)
    retire.add_argument("--expect", default=None, help="the current challenger" + read_expect.format("challenger"))
    args = parser.parse_args(argv)
    if args.command == "challenge" and args.share is None:
        if args.mode == "split":
            parser.error("challenge --mode split needs --share (the share of flights it takes, 0 to 1)")
        args.share = 1.0
    layout = DataLayout.resolve()
    registry = ModelRegistry(args.home or layout.bentoml_home, layout.database_url, layout.s3)
    name = args.model

    def expected(current: str | None) -> str | None:
        given = getattr(args, "expect", None)
        if given is None:
            return current
        return None if given == "none" else registry.canonical(name, given)

    try:
        state = registry.state(name)
        champion = state.champion
        if args.command == "promote":
            if args.no_guard:
                print(registry.promote(name, args.tag, args.reason, expected(champion)).to_json())
            else:
                for event in registry.promote_guarded(name, args.tag, args.reason, expected(champion)):
                    print(event.to_json())
        elif args.command == "rollback":
            print(registry.rollback(name, args.reason, expected(champion), args.to_tag).to_json())
        elif args.command == "challenge":
            event = registry.challenge(
                name, args.tag, args.mode, args.share, args.reason, expected(champion), args.force
            )
            print(event.to_json())
        elif args.command == "retire":
            current = state.challenger.tag if state.challenger else None
            target = expected(current)
            if target is None:
                raise LookupError(f"{name} has no challenger to retire")
            print(registry.retire(name, args.reason, target).to_json())
        elif args.command == "state":
            print(state.to_json())
        else:
            for event in registry.history(name):
                print(event.to_json())
    except (LookupError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
