#!/usr/bin/env python3
"""Backup rows: `berth backup` against restic (Debian's package) on the same
registry data. See README.md, "Backups (a third table)".

Usage: python3 bench/backup.py [--quick] [--berth PATH] [--keep] [--out FILE]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (helpers: image sets, servers, skopeo, du, rendering)

MB = bench.MB


def backup_rows(berth, root, P):
    """Both tools back up the same stopped data directory into fresh
    repositories with default settings (Argon2id 64 MiB for Berth's key,
    scrypt for restic's). First full backup (time and repository size), an
    incremental run after one new image, a run with nothing changed, and a
    full restore of the latest snapshot."""
    rows = []
    layout, extra = os.path.join(root, "img-backup"), os.path.join(root, "img-backup-extra")
    tags, _ = bench.make_image_set(layout, "k", P["images"], P["layers"], P["layer_size"])
    bench.make_image_set(extra, "x", 1, P["layers"], P["layer_size"])
    data = os.path.join(root, "backup-src")
    env = {**os.environ, "BERTH_BACKUP_PASSWORD": "bench-backup-pw", "RESTIC_PASSWORD": "bench-backup-pw"}
    env.pop("BERTH_CONFIG", None)
    berth_repo, restic_repo = os.path.join(root, "repo-berth"), os.path.join(root, "repo-restic")

    def fill(layout, tags):
        srv = bench.start_berth(berth, root, "berth-backup-src", data)
        try:
            for tag in tags:
                bench.skopeo_copy(f"oci:{layout}:{tag}", f"docker://{srv.addr}/bench/bk-{tag}:latest")
        finally:
            srv.stop()

    def timed(cmd):
        os.sync()
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.strip()}")
        bench.log(f"{os.path.basename(cmd[0])} {cmd[1] if cmd[0] == berth else cmd[4]}: "
                  f"{time.perf_counter() - t0:.2f} s {r.stdout.strip()[:200]}")
        return time.perf_counter() - t0

    def both():
        b = timed([berth, "backup", "create", "--repo", berth_repo, "--data-dir", data])
        r = timed(["restic", "--repo", restic_repo, "--quiet", "backup", data])
        return b, r

    fill(layout, tags)
    subprocess.run([berth, "backup", "init", "--repo", berth_repo], env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["restic", "--repo", restic_repo, "--quiet", "init"], env=env, check=True, stdout=subprocess.DEVNULL)
    src_mb = bench.du_bytes(data) / MB
    b, r = both()
    rows.append((f"First full backup of {src_mb:.0f} MB of registry data (s)", b, r, 2, "lower"))
    size = [bench.du_bytes(berth_repo), bench.du_bytes(restic_repo)]
    rows.append(("Backup repository size after it (MB)", size[0] / MB, size[1] / MB, 1, "lower"))
    fill(extra, ["x0"])
    b, r = both()
    rows.append(("Incremental backup after one new image (s)", b, r, 2, "lower"))
    grown = [bench.du_bytes(berth_repo) - size[0], bench.du_bytes(restic_repo) - size[1]]
    rows.append(("Repository growth from that run (MB)", grown[0] / MB, grown[1] / MB, 1, "lower"))
    b, r = both()
    rows.append(("Backup with nothing changed (s)", b, r, 2, "lower"))
    b = timed([berth, "backup", "restore", "latest", "--repo", berth_repo, "--to", os.path.join(root, "restored-berth")])
    r = timed(["restic", "--repo", restic_repo, "--quiet", "restore", "latest", "--target", os.path.join(root, "restored-restic")])
    rows.append(("Full restore of the latest snapshot (s)", b, r, 2, "lower"))
    return rows


def render(rows, meta):
    lines = [f"# berth backup vs restic ({meta['when']})", "",
             f"- mode: {meta['mode']}; host: {meta['cpus']} CPUs; berth `{meta['berth']}`; {meta['restic']}",
             f"- registry data: {meta['payload']}", "",
             "| Metric | berth backup | restic | Ratio (berth/restic) | Better |", "|---|---:|---:|---:|---|"]
    for name, b, r, digits, better in rows:
        ratio = f"{b / r:.2f}x" if b is not None and r else "n/a"
        lines.append(f"| {name} | {bench.fmt(b, digits)} | {bench.fmt(r, digits)} | {ratio} | {better} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    ap.add_argument("--berth", default=os.path.join(bench.REPO_ROOT, "target", "release", "berth"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--out", default=os.path.join(bench.HERE, "out", "backup.md"))
    args = ap.parse_args()
    for tool in ("restic", "skopeo", "du"):
        if not shutil.which(tool):
            sys.exit(f"backup.py: {tool} is required (restic: apt-get install restic)")
    # The same image sizes as the push rows of bench.py.
    P = dict(images=4, layers=2, layer_size=2 * bench.MIB) if args.quick else dict(images=8, layers=3, layer_size=8_300_000)
    root = tempfile.mkdtemp(prefix="berth-bench-backup-")
    try:
        rows = backup_rows(args.berth, root, P)
        restic = subprocess.run(["restic", "version"], stdout=subprocess.PIPE, text=True).stdout.strip()
        meta = dict(when=time.strftime("%Y-%m-%d %H:%M:%S"), mode="quick" if args.quick else "full", cpus=os.cpu_count(),
                    berth=args.berth, restic=restic,
                    payload=f"{P['images']} images x {P['layers']} layers x {P['layer_size'] / MB:.1f} MB, then 1 more image")
        table = render(rows, meta)
        print(table)
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(table)
    finally:
        if args.keep:
            bench.log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
