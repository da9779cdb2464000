"""`knee-node` command line: one subcommand per path through the stages."""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

from node.config import DEFAULT_MODEL_DIR, Config, ConfigError, Destination, TlsConfig, load_config
from node.infra.logs import quiet_libraries
from node.queue import DeadJob, QueueUnavailable, open_queue
from node.scu import parse_peer


def cmd_train(args: argparse.Namespace) -> int:
    from node.training.train import TrainOptions, train

    try:
        spec = train(TrainOptions(data=args.data, out=args.out, name=args.out.name, version=args.version,
                                  epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                  image_size=args.image_size, low_res_size=args.low_res_size,
                                  low_res_epochs=args.low_res_epochs,
                                  loss=args.loss, seed=args.seed, device=args.device, resume=args.resume))
    except (OSError, ValueError) as error:  # crops missing or unreadable, options that do not fit together
        print(f"knee-node train: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} (temperature {spec.temperature}, sha256 {spec.sha256[:12]})")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from node.analysis.grading import Analyzer
    from node.analysis.model import Grader
    from node.offline import analyze_files
    from node.report import Equipment
    from node.selection import SelectionRules

    missing = [path for path in args.inputs if not path.exists()]
    if missing:
        for path in missing:
            print(f"{path}: no such file or directory", file=sys.stderr)
        return 2
    try:
        analyzer = Analyzer(Grader(args.model, device=args.device))
    except (OSError, ValueError) as error:
        print(f"{args.model}: {error}", file=sys.stderr)
        return 2
    failed = False
    rules = None if args.force else SelectionRules()
    for result in analyze_files(args.inputs, args.out, analyzer, Equipment(), rules, args.batch_size):
        failed |= result.status == "error"
        if result.status == "error":
            print(f"{result.file}: {result.reason}", file=sys.stderr)
        if args.json:
            print(json.dumps(asdict(result)), flush=True)
        elif result.status == "ok":
            grades = ", ".join(f"{k['laterality']} KL {k['grade']} ({100 * k['confidence']:.0f}%, {k['reliability']})"
                               if k["graded"] else f"{k['laterality']} {k['reason']}" for k in result.knees)
            print(f"{result.file}: {grades} -> {', '.join(result.outputs)}", flush=True)
        elif result.status == "skipped":
            print(f"{result.file}: skipped: {result.reason}", flush=True)
    return 1 if failed else 0


def load(path: Path | None) -> Config:
    """The config, or exit 2 with the config error's one line."""
    try:
        return load_config(path)
    except ConfigError as error:
        print(error, file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    from node.serve import serve

    config = load(args.config)
    try:
        return serve(config, role=args.role)
    except (OSError, ValueError) as error:  # port in use, model missing or altered
        print(f"knee-node serve: {error}", file=sys.stderr)
        return 1


def peer_argument(text: str) -> Destination:
    try:
        return parse_peer(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def cmd_echo(args: argparse.Namespace) -> int:
    from node.scu import echo

    started = time.monotonic()
    status = echo(args.peer, args.calling_ae, tls=tls_context(args))
    if status is None:
        print(f"{args.peer}: no association (refused, unreachable or timed out)", file=sys.stderr)
        return 1
    print(f"{args.peer}: C-ECHO status 0x{status:04X} in {1000 * (time.monotonic() - started):.0f} ms")
    return 0 if status == 0 else 1


def cmd_send(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from node.offline import expand
    from node.scu import delivered, send

    files = list(expand(args.files))
    failed = 0
    with tqdm(total=len(files), unit="file", desc=f"C-STORE to {args.peer}", file=sys.stderr) as progress:
        for result in send(files, args.peer, args.calling_ae, tls=tls_context(args)):
            progress.update()
            if not delivered(result.status):
                failed += 1
                reason = result.reason or f"status 0x{result.status:04X}"
                progress.write(f"{result.path}: {reason}", file=sys.stderr)
    print(f"sent {len(files) - failed} of {len(files)} to {args.peer}")
    return 1 if failed else 0


def tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """DICOM TLS for `echo` and `send` when --tls-ca is given."""
    from node.infra.tls import client_context

    if args.tls_ca is None:
        return None
    try:
        return client_context(TlsConfig(args.tls_cert, args.tls_key, args.tls_ca))
    except (ValueError, OSError) as error:  # ssl.SSLError is an OSError
        raise SystemExit(f"knee-node: tls: {error}") from None


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls-ca", type=Path, metavar="PEM",
                        help="DICOM TLS: the peer's certificate must chain to this bundle and name its host")
    parser.add_argument("--tls-cert", type=Path, metavar="PEM", help="client certificate, for peers that ask for one")
    parser.add_argument("--tls-key", type=Path, metavar="PEM", help="its private key (unencrypted)")


def cmd_status(args: argparse.Namespace) -> int:
    from node.queue import ANALYZE, DELIVER

    queue = open_queue(load(args.config))
    counts = queue.counts()
    report = {topic: {"queued": counts.get(topic, {}).get("queued", 0),
                      "leased": counts.get(topic, {}).get("leased", 0),
                      "dead": counts.get(topic, {}).get("dead", 0),
                      "oldest_seconds": round(age, 1) if (age := queue.oldest_age(topic)) is not None else None}
              for topic in (ANALYZE, DELIVER)}
    letters = queue.dead()
    queue.close()
    dead = [{"queue": d.job.topic, "key": d.job.key, "attempts": d.job.attempts, "error": d.error} for d in letters]
    now = time.time()
    reasons = {topic: [{"reason": reason, "count": len(group),
                        "oldest_seconds": round(now - min(d.job.created_at for d in group), 1)}
                       for reason, group in grouped(d for d in letters if d.job.topic == topic)]
               for topic in (ANALYZE, DELIVER)}
    if args.json:
        print(json.dumps({"queues": report, "dead_by_reason": reasons, "dead_letters": dead}))
        return 0
    for topic, row in report.items():
        oldest = f"{row['oldest_seconds']} s" if row["oldest_seconds"] is not None else "-"
        print(f"{topic:8} queued {row['queued']:6}  running {row['leased']:4}  dead {row['dead']:4}  oldest {oldest}")
        for entry in reasons[topic]:
            print(f"  dead {entry['count']:4} queued {entry['oldest_seconds']} s ago at the oldest: {entry['reason']}")
    for letter in dead:
        print(f"dead {letter['queue']} {letter['key']} after {letter['attempts']} attempts: {letter['error']}")
    return 0


def grouped(letters: Iterable[DeadJob]) -> list[tuple[str, list[DeadJob]]]:
    """Dead letters by reason, the most frequent first."""
    groups: dict[str, list[DeadJob]] = {}
    for letter in letters:
        groups.setdefault(letter.error, []).append(letter)
    return sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))


def cmd_requeue(args: argparse.Namespace) -> int:
    queue = open_queue(load(args.config))
    count = queue.requeue_dead(args.queue)
    queue.close()
    print(f"requeued {count} dead letter{'s' if count != 1 else ''}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from node.training.evaluate import evaluate

    try:
        metrics = evaluate(args.model, args.data, args.plots, args.cam_sanity, args.device, args.gallery,
                           args.compare_fp32)
    except (OSError, ValueError) as error:
        print(f"knee-node evaluate: {error}", file=sys.stderr)
        return 1
    print(f"{metrics['model']} on {args.data} ({metrics['n']} crops)")
    for key in ("accuracy", "qwk", "mae", "macro_f1", "ece", "ece_uncalibrated", "adaptive_ece", "brier",
                "joint_attention_median", "attention_flagged", "low_confidence_flagged", "unfamiliar_flagged",
                "cam_randomization_rank_correlation", "fp32_same_grade"):
        if key in metrics:
            print(f"  {key:36} {metrics[key]:.4f}")
    print(f"  {'recall per grade':36} {' '.join(f'{r:.3f}' for r in metrics['recall'])}")
    print("  confusion (rows true, columns predicted):")
    for row in metrics["confusion"]:
        print("    " + " ".join(f"{count:5d}" for count in row))
    if "gallery" in metrics:
        print(f"  gallery: {args.gallery / 'index.html'} ({metrics['gallery']['errors']} misgraded crops)")
    if args.json:
        print(json.dumps(metrics))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from node.training.calibrate import recalibrate

    try:
        spec, report = recalibrate(args.model, args.data, args.device)
    except (OSError, ValueError) as error:
        print(f"knee-node calibrate: {error}", file=sys.stderr)
        return 1
    print(f"{spec.name} {spec.version} re-fitted: {json.dumps(report)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="knee-node", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    analyze = commands.add_parser("analyze", help="grade DICOM files; write SC + SR per radiograph")
    analyze.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="DICOM files or folders (recursive)")
    analyze.add_argument("--out", type=Path, required=True, help="folder for the SC and SR files")
    analyze.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="model folder (default: bundled)")
    analyze.add_argument("--json", action="store_true", help="one JSON object per input on stdout")
    analyze.add_argument("--force", action="store_true", help="grade inputs the selection rules would skip")
    analyze.add_argument("--batch-size", type=int, default=8, help="radiographs per model batch")
    analyze.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    analyze.set_defaults(run=cmd_analyze)

    serve = commands.add_parser("serve", help="run the DICOM node (Storage SCP, worker, dispatcher)")
    serve.add_argument("--config", type=Path, help="node YAML (default: the bundled node/node.yaml)")
    serve.add_argument("--role", choices=("all", "receiver", "worker", "dispatcher"), default="all",
                       help="which stages this process runs (all: the single-process node)")
    serve.set_defaults(run=cmd_serve)

    for name, helptext in (("status", "queue counts by state, oldest job, dead letters"),
                           ("requeue", "put dead letters back into their queue")):
        command = commands.add_parser(name, help=helptext)
        command.add_argument("--config", type=Path, help="node YAML (default: the bundled node/node.yaml)")
        if name == "status":
            command.add_argument("--json", action="store_true", help="one JSON object on stdout")
            command.set_defaults(run=cmd_status)
        else:
            command.add_argument("--queue", choices=("analyze", "deliver"), help="only this queue")
            command.set_defaults(run=cmd_requeue)

    echo = commands.add_parser("echo", help="C-ECHO a DICOM peer")
    echo.add_argument("peer", type=peer_argument, metavar="AET@HOST:PORT")
    echo.add_argument("--calling-ae", default="KNEE_NODE")
    add_tls_arguments(echo)
    echo.set_defaults(run=cmd_echo)

    send = commands.add_parser("send", help="C-STORE files to a DICOM peer")
    send.add_argument("files", nargs="+", type=Path, metavar="FILE", help="DICOM files or folders (recursive)")
    send.add_argument("--to", dest="peer", type=peer_argument, required=True, metavar="AET@HOST:PORT")
    send.add_argument("--calling-ae", default="KNEE_NODE")
    add_tls_arguments(send)
    send.set_defaults(run=cmd_send)

    evaluate = commands.add_parser("evaluate", help="grading metrics, calibration and Grad-CAM sanity on crops")
    evaluate.add_argument("--data", type=Path, required=True, help="folder with labels.csv (file,kl_grade) and images")
    evaluate.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="model folder (default: bundled)")
    evaluate.add_argument("--json", action="store_true", help="end with one JSON line of all figures")
    evaluate.add_argument("--plots", type=Path, help="write confusion.png and reliability.png here")
    evaluate.add_argument("--cam-sanity", action="store_true",
                          help="also run the model randomisation test on the Grad-CAMs")
    evaluate.add_argument("--gallery", type=Path, metavar="DIR",
                          help="write DIR/index.html: every misgraded crop beside its Grad-CAM, by confusion cell")
    evaluate.add_argument("--compare-fp32", action="store_true",
                          help="also grade at fp32 and report how often the grade is the same")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    evaluate.set_defaults(run=cmd_evaluate)

    calibrate = commands.add_parser("calibrate", help="re-fit a model folder's temperature, thresholds and "
                                    "familiarity statistics (at this machine's precision) and rewrite it")
    calibrate.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    calibrate.add_argument("--data", type=Path, required=True, help="folder with train/ and val/ (knee-kl layout)")
    calibrate.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    calibrate.set_defaults(run=cmd_calibrate)

    train = commands.add_parser("train", help="train, select on val/, calibrate and write a model folder")
    train.add_argument("--data", type=Path, required=True, help="folder with train/ and val/ (knee-kl layout)")
    train.add_argument("--out", type=Path, default=DEFAULT_MODEL_DIR, help="model folder to write")
    train.add_argument("--version", default="1.0.0",
                       help="the model's version: it goes into every output's UIDs, so a new model gives new objects")
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--image-size", type=int, default=224, help="input size of the shipped model")
    train.add_argument("--low-res-size", type=int, default=0,
                       help="train the first --low-res-epochs at this size (progressive resizing)")
    train.add_argument("--low-res-epochs", type=int, default=0)
    train.add_argument("--loss", choices=("sord", "ce"), default="sord",
                       help="sord: soft ordinal labels; ce: plain cross-entropy (both class-weighted)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    train.add_argument("--resume", action="store_true", help="continue from OUT/train/checkpoint.pt")
    train.set_defaults(run=cmd_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except QueueUnavailable as error:  # serve, status, requeue: the broker is down or unreachable
        print(f"knee-node {args.command}: queue unavailable: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
