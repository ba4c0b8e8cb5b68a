"""Commands over datasets: audit (register widths), sweep (the narrowest registers that keep a
criterion), serial or on Dask."""
from __future__ import annotations

import sys

import click

from .main import CHECK_FAILED, BadInput, check_output, guard, main
from .options import (check_cluster, data_options, dataset, input_options, input_warning_option, on_cluster,
                      progress_line, warn)


@main.command()
@click.argument("graph")
@input_options
@data_options
@input_warning_option
@click.option("-o", "--out", help="Folder for audit.json, .csv, .md and .html.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
def audit(graph, input_path, random, shape, seed, data, labels, resize, crop, mean, std, batch,
          shard_size, workers, force_workers, scheduler, input_warning, out, force):
    """Audit the register widths of GRAPH over inputs or a whole dataset (--data; serial, or on
    Dask with --workers/--scheduler: the same bytes either way); print the table."""
    from ..files.write import write_folder_atomically
    from ..graph.ir import load_graph
    from ..reports.audit import audit as run_audit
    if out:
        check_output(out, force, graph, input_path, data, labels)  # before the work
    check_cluster(workers, force_workers, scheduler)
    g = guard(load_graph, graph)
    source = dataset(g, data, labels, resize, crop, mean, std, input_path, random, shape, seed)
    total = len(source) if hasattr(source, "__len__") else None
    report = guard(on_cluster, lambda client: run_audit(g, source, client, batch, shard_size,
                                                          progress_line("audit")(total)),
                    workers, force_workers, scheduler)
    warn(report.input_warning(input_warning))
    click.echo(report.to_table().rstrip())
    if out:
        files = {"audit.json": report.to_json(), "audit.csv": report.to_csv(),
                 "audit.md": report.to_markdown(), "audit.html": report.to_html()}
        guard(write_folder_atomically, out, {k: v.encode() for k, v in files.items()}, force)
        click.echo(f"wrote {out}")


@main.command()
@click.argument("graph")
@data_options
@input_warning_option
@click.option("--criterion", default="exact", show_default=True,
              help="What the narrower registers must keep: exact (bit-identical outputs), lsb:N "
                   "(within N output LSBs), top1[:F] (the same top-1 class on a fraction F of the "
                   "samples) or accuracy[:D] (top-1 accuracy at most D below, with labels).")
@click.option("--registers", default="accumulator,output", show_default=True,
              help="Which registers to size: accumulator (MAC layers), output (layers with an output register), "
                   "multiplier (the fixed-point multipliers of a --rescale multiplier import).")
@click.option("--layers", help="Only these layers (names, comma-separated).")
@click.option("--overflow", default="SAT", show_default=True,
              help="Overflow modes to try, comma-separated: SAT, SAT_SYM, WRAP.")
@click.option("--min-bits", type=click.IntRange(1), default=2, show_default=True,
              help="The narrowest width to try.")
@click.option("-o", "--out", required=True,
              help="Folder for sweep.json, sweep.txt, sweep.html and graph/ (the proposed graph).")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
def sweep(graph, data, labels, resize, crop, mean, std, batch, shard_size, workers, force_workers,
          scheduler, input_warning, criterion, registers, layers, overflow, min_bits, out, force):
    """Find, per layer, the narrowest accumulator and output registers that keep GRAPH's outputs
    on --data within --criterion (each layer alone, then all together); write the report and
    the proposed graph (ready for `vectors`)."""
    from ..files.write import write_folder_atomically
    from ..graph.ir import load_graph
    from ..reports.sweep import Criterion, sweep as run_sweep
    check_output(out, force, graph, data, labels)  # before the work
    if data is None:
        raise BadInput("give the dataset: --data PATH")
    crit = guard(Criterion.parse, criterion)
    check_cluster(workers, force_workers, scheduler)
    g = guard(load_graph, graph)
    source = dataset(g, data, labels, resize, crop, mean, std)
    report, proposed = guard(on_cluster, lambda client: run_sweep(
        g, source, crit, [r.strip() for r in registers.split(",")],
        [n.strip() for n in layers.split(",")] if layers else None,
        [m.strip().upper() for m in overflow.split(",")], min_bits, client, batch, shard_size,
        lambda label: progress_line(label)(len(source))), workers, force_workers, scheduler)
    warn(report.input_warning(input_warning))
    click.echo(report.to_table().rstrip())
    files = {"sweep.json": report.to_json(), "sweep.txt": report.to_table(), "sweep.html": report.to_html()}
    files = {k: v.encode() for k, v in files.items()}
    files.update({f"graph/{k}": v for k, v in proposed.files().items()})
    guard(write_folder_atomically, out, files, force)
    click.echo(f"wrote {out}")
    sys.exit(0 if report.combined_passes else CHECK_FAILED)
