#!/usr/bin/env python3
"""Side-by-side benchmark of Berth and CNCF distribution (docker-registry).

Both servers run at the same time, each on its own ephemeral loopback port
with a fresh temporary data directory. Every phase runs against Berth first
and then against distribution, with the other server idle. See README.md.
"""

import argparse
import concurrent.futures
import hashlib
import http.client
import io
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])

MB = 1_000_000
MIB = 1 << 20


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Synthetic images


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


def write_blob(layout, data):
    digest = sha256_hex(data)
    path = os.path.join(layout, "blobs", "sha256", digest)
    with open(path, "wb") as f:
        f.write(data)
    return "sha256:" + digest, len(data)


def make_layer(size):
    """A tar holding one file of random bytes, wrapped in gzip with
    stored (level 0) deflate blocks: a valid gzip stream that costs no CPU to
    produce, and that skopeo copies as-is instead of recompressing."""
    payload = os.urandom(size)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("data.bin")
        info.size = size
        info.mtime = 0
        tar.addfile(info, io.BytesIO(payload))
    raw = buf.getvalue()
    comp = zlib.compressobj(0, zlib.DEFLATED, 31)
    gz = comp.compress(raw) + comp.flush()
    return gz, "sha256:" + sha256_hex(raw)


def make_image_set(layout, prefix, images, layers, layer_size):
    """Writes an OCI layout with `images` images of `layers` random layers.
    Returns (tags, total bytes of all blobs and manifests)."""
    os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    tags, total = [], 0
    for i in range(images):
        descs, diff_ids = [], []
        for _ in range(layers):
            gz, diff_id = make_layer(layer_size)
            d, n = write_blob(layout, gz)
            descs.append({"mediaType": OCI_LAYER_GZIP, "digest": d, "size": n})
            diff_ids.append(diff_id)
            total += n
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": [f"BENCH_IMAGE={prefix}{i}", f"NONCE={os.urandom(8).hex()}"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
        cd, cn = write_blob(layout, json.dumps(config).encode())
        total += cn
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": cd, "size": cn},
            "layers": descs,
        }
        md, mn = write_blob(layout, json.dumps(manifest).encode())
        total += mn
        tag = f"{prefix}{i}"
        index["manifests"].append({
            "mediaType": OCI_MANIFEST, "digest": md, "size": mn,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        })
        tags.append(tag)
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(index, f)
    return tags, total


# ---------------------------------------------------------------------------
# Servers


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(addr, proc, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server at {addr} exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection(addr, timeout=2)
            c.request("GET", "/v2/")
            r = c.getresponse()
            r.read()
            c.close()
            if r.status in (200, 401):
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server at {addr} not ready after {timeout}s")


class Server:
    def __init__(self, name, proc, addr, data_dir, log_path):
        self.name, self.proc, self.addr, self.data_dir, self.log_path = name, proc, addr, data_dir, log_path

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_berth(binary, root, name="berth", data=None, extra_args=(), env=None):
    data = data or os.path.join(root, "berth-data")
    os.makedirs(data, exist_ok=True)
    log_path = os.path.join(root, f"{name}.log")
    errf = open(log_path, "ab")
    proc = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", data, *extra_args],
        stdout=subprocess.PIPE, stderr=errf, text=True, env={**os.environ, **(env or {})})
    addr = None
    deadline = time.time() + 30
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = re.search(r"berth listening on http://(\S+)", line)
        if m:
            addr = m.group(1)
            break
    if addr is None:
        proc.kill()
        raise RuntimeError(f"berth did not report its address; see {log_path}")
    # Keep draining stdout so the server never blocks on a full pipe.
    threading_drain(proc.stdout)
    wait_ready(addr, proc)
    return Server(name, proc, addr, data, log_path)


def threading_drain(stream):
    import threading

    def drain():
        for _ in stream:
            pass
    threading.Thread(target=drain, daemon=True).start()


def start_distribution(binary, root):
    data = os.path.join(root, "dist-data")
    os.makedirs(data)
    port = free_port()
    addr = f"127.0.0.1:{port}"
    cfg = os.path.join(root, "dist-config.yml")
    with open(cfg, "w") as f:
        f.write(f"""version: 0.1
log:
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: {data}
  delete:
    enabled: true
http:
  addr: {addr}
""")
    log_path = os.path.join(root, "dist.log")
    errf = open(log_path, "wb")
    proc = subprocess.Popen([binary, "serve", cfg], stdout=errf, stderr=errf)
    wait_ready(addr, proc)
    return Server("distribution", proc, addr, data, log_path)


# ---------------------------------------------------------------------------
# HTTP helpers


class Client:
    """One keep-alive connection with a few registry conveniences."""

    def __init__(self, addr):
        self.addr = addr
        self.conn = http.client.HTTPConnection(addr, timeout=120)

    def req(self, method, path, body=None, headers=None, expect=None):
        headers = dict(headers or {})
        if body is not None and "Content-Length" not in headers:
            headers["Content-Length"] = str(len(body))
        try:
            self.conn.request(method, path, body=body, headers=headers)
            r = self.conn.getresponse()
        except (http.client.HTTPException, OSError):
            self.conn.close()
            self.conn = http.client.HTTPConnection(self.addr, timeout=120)
            self.conn.request(method, path, body=body, headers=headers)
            r = self.conn.getresponse()
        data = r.read()
        if expect is not None and r.status not in expect:
            raise RuntimeError(f"{method} {path} -> {r.status}: {data[:300]!r}")
        return r, data

    @staticmethod
    def path_of(location):
        u = urllib.parse.urlsplit(location)
        return u.path + ("?" + u.query if u.query else "")

    def upload_blob(self, repo, data):
        digest = "sha256:" + sha256_hex(data)
        r, _ = self.req("POST", f"/v2/{repo}/blobs/uploads/", body=b"", expect=(202,))
        loc = self.path_of(r.getheader("Location"))
        sep = "&" if "?" in loc else "?"
        self.req("PUT", f"{loc}{sep}digest={digest}", body=data,
                 headers={"Content-Type": "application/octet-stream"}, expect=(201,))
        return digest

    def mount(self, repo, digest, source):
        r, _ = self.req("POST", f"/v2/{repo}/blobs/uploads/?mount={digest}&from={source}", body=b"")
        if r.status == 201:
            return
        if r.status != 202:
            raise RuntimeError(f"mount into {repo} -> {r.status}")
        raise RuntimeError(f"{self.addr}: cross-repository mount not honoured")

    def put_manifest(self, repo, ref, body):
        self.req("PUT", f"/v2/{repo}/manifests/{ref}", body=body,
                 headers={"Content-Type": OCI_MANIFEST}, expect=(201,))

    def close(self):
        self.conn.close()


def tiny_image(client, repo):
    """Uploads a tiny config and layer to `repo`; returns (manifest bytes, blob digests)."""
    gz, diff_id = make_layer(64)
    layer = client.upload_blob(repo, gz)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    cfg = client.upload_blob(repo, config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": cfg, "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": layer, "size": len(gz)}],
    }).encode()
    return manifest, [cfg, layer]


# ---------------------------------------------------------------------------
# Measurements


def skopeo_copy(src, dst):
    cmd = ["skopeo", "--insecure-policy", "copy", "--quiet",
           "--src-tls-verify=false", "--dest-tls-verify=false", src, dst]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.strip()}")


def push_sequential(srv, layout, tags, total):
    t0 = time.perf_counter()
    for tag in tags:
        skopeo_copy(f"oci:{layout}:{tag}", f"docker://{srv.addr}/bench/seq-{tag}:latest")
    return total / (time.perf_counter() - t0) / MB


def push_parallel(srv, layout, tags, total, workers=4):
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futs = [pool.submit(skopeo_copy, f"oci:{layout}:{tag}", f"docker://{srv.addr}/bench/par-{tag}:latest")
                for tag in tags]
        for f in futs:
            f.result()
    return total / (time.perf_counter() - t0) / MB


def pull(srv, tags, total, out_dir):
    t0 = time.perf_counter()
    for tag in tags:
        skopeo_copy(f"docker://{srv.addr}/bench/seq-{tag}:latest", f"oci:{out_dir}:{tag}")
    secs = time.perf_counter() - t0
    shutil.rmtree(out_dir, ignore_errors=True)
    return total / secs / MB


def curl(args):
    r = subprocess.run(["curl", "-sS"] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"curl {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def raw_put(srv, path, digest, size, tries):
    """POST to open an upload, then one PUT ?digest= carrying the whole blob."""
    best = 0.0
    c = Client(srv.addr)
    for _ in range(tries):
        r, _ = c.req("POST", "/v2/bench/big/blobs/uploads/", body=b"", expect=(202,))
        loc = Client.path_of(r.getheader("Location"))
        sep = "&" if "?" in loc else "?"
        out = curl(["-o", "/dev/null", "-w", "%{http_code} %{time_total}", "-X", "PUT",
                    "-H", "Content-Type: application/octet-stream", "-H", "Expect:",
                    "-T", path, f"http://{srv.addr}{loc}{sep}digest={digest}"])
        code, secs = out.split()
        if code != "201":
            raise RuntimeError(f"{srv.name}: monolithic PUT -> {code}")
        best = max(best, size / float(secs) / MB)
    c.close()
    return best


def blob_get(srv, digest, size, tries):
    best = 0.0
    for _ in range(tries):
        out = curl(["-o", "/dev/null", "-w", "%{http_code} %{size_download} %{speed_download}",
                    f"http://{srv.addr}/v2/bench/big/blobs/{digest}"])
        code, got, speed = out.split()
        if code != "200" or int(got) != size:
            raise RuntimeError(f"{srv.name}: blob GET -> {code}, {got} bytes")
        best = max(best, float(speed) / MB)
    return best


def parse_wrk_latency(text):
    v = float(re.match(r"[\d.]+", text).group(0))
    unit = text[len(re.match(r"[\d.]+", text).group(0)):]
    return v * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk_manifest(srv, url_path, conns, secs, lua):
    threads = min(2, conns)
    r = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{secs}s", "--latency", "-s", lua,
                        f"http://{srv.addr}{url_path}"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = r.stdout
    m_rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    m_p99 = re.search(r"^\s*99%\s+(\S+)", out, re.M)
    if r.returncode != 0 or not m_rps or not m_p99:
        raise RuntimeError(f"wrk failed:\n{out}")
    if "Non-2xx" in out or "Socket errors" in out:
        log(f"{srv.name}: wrk reported errors:\n{out}")
    return float(m_rps.group(1)), parse_wrk_latency(m_p99.group(1))


def median_get_ms(srv, path, n, check):
    c = Client(srv.addr)
    r, data = c.req("GET", path, expect=(200,))  # warm-up
    check(data)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        r, data = c.req("GET", path, expect=(200,))
        times.append((time.perf_counter() - t0) * 1000)
    c.close()
    return statistics.median(times)


def fill_tags(srv, repo, count):
    c = Client(srv.addr)
    manifest, _ = tiny_image(c, repo)
    for i in range(count):
        c.put_manifest(repo, f"t{i:04d}", manifest)
    c.close()


def fill_repos(srv, count):
    c = Client(srv.addr)
    seed = "bench/catalog-seed"
    manifest, blobs = tiny_image(c, seed)
    c.put_manifest(seed, "latest", manifest)
    for i in range(count):
        repo = f"cat/r{i:04d}"
        for d in blobs:
            c.mount(repo, d, seed)
        c.put_manifest(repo, "latest", manifest)
    c.close()


def vm_hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def du_bytes(path):
    out = subprocess.run(["du", "-sb", path], stdout=subprocess.PIPE, text=True, check=True).stdout
    return int(out.split()[0])


# ---------------------------------------------------------------------------
# Report


def security_rows(args, root, P, big_path, big_digest):
    """Cost of Berth's security features, each against plain Berth measured
    in the same phase: authenticated manifest GETs (Basic, Bearer token) and
    encryption at rest (large blob PUT and GET)."""
    import base64
    rows = []
    data = os.path.join(root, "sec-data")
    repo, path = "sec/app", "/v2/sec/app/manifests/latest"

    def wrk_with(srv, headers, conns=16):
        lua = os.path.join(root, f"sec-{len(headers)}-{conns}.lua")
        with open(lua, "w") as f:
            f.write('wrk.method = "GET"\n')
            f.write(f'wrk.headers["Accept"] = "{ACCEPT}"\n')
            for k, v in headers.items():
                f.write(f'wrk.headers["{k}"] = "{v}"\n')
        os.sync()
        return wrk_manifest(srv, path, conns, P["wrk_secs"], lua)

    srv = start_berth(args.berth, root, "berth-plain", data)
    try:
        c = Client(srv.addr)
        m, _ = tiny_image(c, repo)
        c.put_manifest(repo, "latest", m)
        c.close()
        anon = wrk_with(srv, {})
    finally:
        srv.stop()
    log(f"anonymous manifest GET: {anon}")

    htpasswd = os.path.join(root, "htpasswd")
    subprocess.run([args.berth, "user", "add", "bench", "--file", htpasswd], input="bench-pw\n",
                   text=True, check=True, stdout=subprocess.DEVNULL)
    basic_hdr = "Basic " + base64.b64encode(b"bench:bench-pw").decode()
    results = {}
    for mode in ("basic", "token"):
        cfg = os.path.join(root, f"auth-{mode}.toml")
        with open(cfg, "w") as f:
            f.write(f'[auth]\nmode = "{mode}"\nhtpasswd = "{htpasswd}"\n'
                    '[[auth.rules]]\nrepositories = ["**"]\nactions = ["admin"]\nusers = ["bench"]\n')
        srv = start_berth(args.berth, root, f"berth-{mode}", data, ["--config", cfg])
        try:
            if mode == "basic":
                results[mode] = wrk_with(srv, {"Authorization": basic_hdr})
            else:
                c = Client(srv.addr)
                _, body = c.req("GET", f"/token?service=berth&scope=repository:{repo}:pull",
                                headers={"Authorization": basic_hdr}, expect=(200,))
                c.close()
                token = json.loads(body)["token"]
                results[mode] = wrk_with(srv, {"Authorization": f"Bearer {token}"})
        finally:
            srv.stop()
        log(f"{mode} manifest GET: {results[mode]}")
    rows.append(("Manifest GET, 16 conns, anonymous (req/s)", anon[0], anon[0], 0, "baseline"))
    rows.append(("Manifest GET, 16 conns, Basic auth (req/s)", results["basic"][0], anon[0], 0, "higher"))
    rows.append(("Manifest GET, 16 conns, Bearer token (req/s)", results["token"][0], anon[0], 0, "higher"))
    rows.append(("Manifest GET p99, Basic auth (ms)", results["basic"][1], anon[1], 2, "lower"))
    rows.append(("Manifest GET p99, Bearer token (ms)", results["token"][1], anon[1], 2, "lower"))

    # Encryption at rest: fresh data dirs, same blob, plain then encrypted.
    key = subprocess.run([args.berth, "encryption", "new-key"], stdout=subprocess.PIPE, text=True,
                         check=True).stdout.strip()
    enc = {}
    for label, env in (("plain", {}), ("encrypted", {"BERTH_ENCRYPTION_KEY": key})):
        srv = start_berth(args.berth, root, f"berth-{label}-blobs", os.path.join(root, f"blobs-{label}"), env=env)
        try:
            os.sync()
            put = raw_put(srv, big_path, big_digest, P["big"], P["tries"])
            os.sync()
            get = blob_get(srv, big_digest, P["big"], P["tries"])
        finally:
            srv.stop()
        enc[label] = (put, get)
        log(f"{label}: PUT {put:.1f} MB/s, GET {get:.1f} MB/s")
    big_mib = P["big"] // MIB
    rows.append((f"Blob PUT {big_mib} MiB, encrypted at rest (MB/s)", enc["encrypted"][0], enc["plain"][0], 1, "higher"))
    rows.append((f"Blob GET {big_mib} MiB, encrypted at rest (MB/s)", enc["encrypted"][1], enc["plain"][1], 1, "higher"))
    return rows


def latency_ms(srv, paths, rounds, expect_hits=True):
    """GETs every path in `paths` `rounds` times over one keep-alive
    connection (after one warm-up round); returns (p50, p99) in ms."""
    c = Client(srv.addr)
    for path in paths:
        _, data = c.req("GET", path, expect=(200,))
        if expect_hits and path.startswith("/api/") and not json.loads(data).get("results"):
            log(f"warning: {path} found nothing")
    times = []
    for _ in range(rounds):
        for path in paths:
            t0 = time.perf_counter()
            c.req("GET", path, expect=(200,))
            times.append((time.perf_counter() - t0) * 1000)
    c.close()
    times.sort()
    return times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.99))]


SEARCH_QUERIES = [
    "nginx",                                    # a word many names contain
    "redis-709",                                # one exact last component
    "seed/t42",                                 # a name prefix
    "grafana+team",                             # words from the description
    "platform:linux/arm64",                     # a filter alone
    "python+label:org.opencontainers.image.version=1.7",
    "nothing-matches-this",
]


def search_rows(args, root, P):
    """Search latency (p50/p99 over a mix of queries, /api/v1/search) and
    UI page time at two registry sizes. The repositories are synthetic rows
    added to a stopped data directory by `berth seed-search` (the same index
    a push writes); distribution has no search, so it has no column here."""
    rows = []
    data = os.path.join(root, "search-data")
    os.makedirs(data)
    have = 0
    for size in P["search_sizes"]:
        t0 = time.perf_counter()
        subprocess.run([args.berth, "seed-search", "--data-dir", data, "--repositories", str(size - have),
                        "--prefix", "seed" if have == 0 else f"seed{have}"],
                       check=True, stdout=subprocess.DEVNULL)
        log(f"seeded {size - have} repositories ({time.perf_counter() - t0:.1f} s)")
        have = size
        srv = start_berth(args.berth, root, f"berth-search-{size}", data, env={"BERTH_GC_INTERVAL_SECS": "0"})
        try:
            paths = [f"/api/v1/search?q={q}&n=25&page=1" for q in SEARCH_QUERIES]
            p50, p99 = latency_ms(srv, paths, P["search_rounds"], expect_hits=False)
            rows.append((f"Search API, {size:,} repositories, {len(paths)} query kinds, p50 (ms)", p50, 2))
            rows.append((f"Search API, {size:,} repositories, p99 (ms)", p99, 2))
            d50, _ = latency_ms(srv, [f"/v1/search?q={q}&n=25" for q in ("nginx", "redis-709")],
                                P["search_rounds"], expect_hits=False)
            rows.append((f"Docker v1 search, {size:,} repositories, p50 (ms)", d50, 2))
            ui = ["/", "/?q=nginx", "/r/seed/t9/redis-709", "/r/seed/t9/redis-709/manifests/latest"]
            u50, u99 = latency_ms(srv, ui, P["search_rounds"], expect_hits=False)
            rows.append((f"UI pages (home, results, repository, manifest), {size:,} repositories, p50 (ms)", u50, 2))
            rows.append((f"UI pages, {size:,} repositories, p99 (ms)", u99, 2))
        finally:
            srv.stop()
    return rows


def render_search(rows):
    lines = ["", "## Search and web UI (distribution has neither: `docker search` gets 404 there)", "",
             "| Metric | Berth |", "|---|---:|"]
    for name, b, digits in rows:
        lines.append(f"| {name} | {fmt(b, digits)} |")
    return "\n".join(lines) + "\n"


def populate_for_gc(srv, n_repos, images_per_repo, drop_per_repo, workers=8):
    """Fills `n_repos` repositories with `images_per_repo` tiny images each
    (a config and a layer: two blobs per image) over raw HTTP, several
    repositories at a time, then deletes `drop_per_repo` images of each by
    digest so their blobs become garbage. Returns (blobs, blobs made garbage)."""
    def one(i):
        c = Client(srv.addr)
        repo = f"gc/r{i:04d}"
        digests = []
        for j in range(images_per_repo):
            layer = os.urandom(200)
            config = json.dumps({"architecture": "amd64", "os": "linux", "n": f"{i}-{j}",
                                 "rootfs": {"type": "layers", "diff_ids": []}}).encode()
            ld, cd = c.upload_blob(repo, layer), c.upload_blob(repo, config)
            manifest = json.dumps({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": cd, "size": len(config)},
                "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": ld, "size": len(layer)}],
            }).encode()
            c.put_manifest(repo, f"v{j}", manifest)
            digests.append("sha256:" + sha256_hex(manifest))
        for d in digests[:drop_per_repo]:
            c.req("DELETE", f"/v2/{repo}/manifests/{d}", expect=(202,))
        c.close()
    with concurrent.futures.ThreadPoolExecutor(workers) as ex:
        list(ex.map(one, range(n_repos)))
    return n_repos * images_per_repo * 2, n_repos * drop_per_repo * 2


def run_measured(cmd, env=None):
    """Runs `cmd`; returns (seconds, peak RSS of the process in MiB).
    The peak is the process's VmHWM, sampled every 5 ms until it exits:
    the rusage maximum of a child forked from this Python process would
    include Python's own resident size, carried over the exec."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})})
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, vm_hwm_kib(proc.pid))
        except OSError:
            pass
        time.sleep(0.005)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}")
    return elapsed, peak / 1024


def blob_files(srv):
    """Blob files in a server's data directory (Berth: blobs/sha256/xx/HEX;
    distribution: docker/registry/v2/blobs/sha256/xx/HEX/data)."""
    top = os.path.join(srv.data_dir, "blobs") if srv.name.startswith("berth") else \
        os.path.join(srv.data_dir, "docker", "registry", "v2", "blobs")
    n = 0
    for _, _, files in os.walk(top):
        n += len(files) if srv.name.startswith("berth") else files.count("data")
    return n


def gc_rows(args, root, P):
    """Garbage collection: time and peak memory of a collection over a
    registry of many small blobs in many repositories (Berth on its stopped
    data directory, distribution's `garbage-collect` on its own, which needs
    the registry stopped or read-only), and Berth's push throughput while
    collections run back to back through the admin API, against none."""
    import threading
    rows = []
    base = os.path.join(root, "gc")
    os.makedirs(base)
    n_repos, per_repo, drop = P["gc_repos"], 5, 2
    berth_env = {"BERTH_GC_GRACE_SECS": "0", "BERTH_GC_INTERVAL_SECS": "0"}
    berth = start_berth(args.berth, base, name="berth-gc", data=os.path.join(base, "berth-data"), env=berth_env)
    dist = start_distribution(args.distribution, base)
    servers = [berth, dist]
    try:
        counts = []
        for s in servers:
            t0 = time.perf_counter()
            counts.append(populate_for_gc(s, n_repos, per_repo, drop))
            log(f"{s.name}: {counts[-1][0]} blobs in {n_repos} repositories, {counts[-1][1]} made garbage "
                f"({time.perf_counter() - t0:.1f} s)")
        blobs, garbage = counts[0]
        for s in servers:
            s.stop()
        os.sync()
        before = [blob_files(s) for s in servers]
        b_secs, b_rss = run_measured([args.berth, "gc", "--data-dir", berth.data_dir], berth_env)
        d_secs, d_rss = run_measured([args.distribution, "garbage-collect", os.path.join(base, "dist-config.yml")])
        after = [blob_files(s) for s in servers]
        label = f"{blobs:,} blobs / {n_repos:,} repos, {garbage:,} unreferenced"
        rows.append((f"GC of a stopped registry, {label} (s)", b_secs, d_secs, 2, "lower"))
        rows.append(("GC peak RSS, VmHWM sampled (MiB)", b_rss, d_rss, 1, "lower"))
        rows.append(("Files removed by that GC (distribution stores manifests as blobs too)", before[0] - after[0], before[1] - after[1], 0, "same"))

        # Push throughput on the populated registry, without and with
        # collections looping (distribution cannot collect while serving).
        berth = start_berth(args.berth, base, name="berth-gc2", data=berth.data_dir,
                            env={"BERTH_GC_INTERVAL_SECS": "0"})
        servers = [berth]
        results = {}
        for phase in ("without", "with"):
            layout = os.path.join(base, f"img-{phase}")
            tags, total = make_image_set(layout, f"g{phase[0]}", P["images"], P["layers"], P["layer_size"])
            stop = threading.Event()
            runs, gc_ms = [], []

            def loop():
                c = Client(berth.addr)
                while not stop.is_set():
                    t = time.perf_counter()
                    c.req("POST", "/admin/gc", body=b"", expect=(200,))
                    gc_ms.append((time.perf_counter() - t) * 1000)
                    runs.append(1)
                c.close()
            t = threading.Thread(target=loop) if phase == "with" else None
            if t:
                t.start()
            os.sync()
            try:
                results[phase] = push_parallel(berth, layout, tags, total)
            finally:
                stop.set()
                if t:
                    t.join()
            if phase == "with":
                results["runs"] = len(runs)
                results["gc_ms"] = statistics.median(gc_ms) if gc_ms else None
        rows.append(("Push, 4 parallel skopeo copies, GC looping (MB/s)", results["with"], None, 1, "higher"))
        rows.append(("Push, 4 parallel skopeo copies, no GC (MB/s)", results["without"], None, 1, "higher"))
        rows.append((f"Online GC run during those pushes, median of {results['runs']} (ms)",
                     results["gc_ms"], None, 1, "lower"))
    finally:
        for s in servers:
            s.stop()
    return rows


def render_gc(rows):
    lines = ["", "## Garbage collection (distribution: `garbage-collect` on its stopped data directory)", "",
             "| Metric | Berth | distribution | Ratio (berth/dist) | Better |", "|---|---:|---:|---:|---|"]
    for name, b, d, digits, better in rows:
        ratio = f"{b / d:.2f}x" if b is not None and d else "n/a"
        dv = "n/a" if d is None else fmt(d, digits)
        lines.append(f"| {name} | {fmt(b, digits)} | {dv} | {ratio} | {better} |")
    return "\n".join(lines) + "\n"


def render_security(rows):
    lines = ["", "## Cost of security features (Berth against plain Berth, same phase)", "",
             "| Metric | With feature | Without | Ratio | Better |", "|---|---:|---:|---:|---|"]
    for name, b, d, digits, better in rows:
        ratio = f"{b / d:.2f}x" if b is not None and d else "n/a"
        lines.append(f"| {name} | {fmt(b, digits)} | {fmt(d, digits)} | {ratio} | {better} |")
    return "\n".join(lines) + "\n"


def fmt(v, digits):
    if v is None:
        return "error"
    return f"{v:,.{digits}f}"


def render(rows, meta):
    lines = [
        "| Metric | Berth | distribution | Ratio (berth/dist) | Better |",
        "|---|---:|---:|---:|---|",
    ]
    for name, b, d, digits, better in rows:
        ratio = f"{b / d:.2f}x" if b is not None and d is not None and d else "n/a"
        lines.append(f"| {name} | {fmt(b, digits)} | {fmt(d, digits)} | {ratio} | {better} |")
    head = [f"# Berth vs distribution ({meta['when']})", "",
            f"- mode: {meta['mode']}; host: {meta['cpus']} CPUs, loopback, client on the same machine",
            f"- berth: `{meta['berth']}` ({meta['berth_rev']})",
            f"- distribution: {meta['dist_version']}",
            f"- push/pull payload: {meta['payload']}",
            f"- elapsed: {meta['elapsed']:.0f} s", ""]
    return "\n".join(head + lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    ap.add_argument("--berth", default=os.path.join(REPO_ROOT, "target", "release", "berth"))
    ap.add_argument("--distribution", default="/usr/bin/docker-registry")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--out", default=os.path.join(HERE, "out", "latest.md"))
    ap.add_argument("--gc-only", action="store_true", help="only the garbage-collection rows")
    ap.add_argument("--search-only", action="store_true", help="only the search and UI rows")
    args = ap.parse_args()

    if args.quick:
        P = dict(images=4, layers=2, layer_size=2 * MIB, big=32 * MIB, tries=2,
                 wrk_secs=3, tags=100, repos=100, gets=5, gc_repos=100,
                 search_sizes=(1000, 5000), search_rounds=5)
    else:
        # 8 images x 3 layers x ~8.3 MB = ~200 MB per image set.
        P = dict(images=8, layers=3, layer_size=8_300_000, big=256 * MIB, tries=3,
                 wrk_secs=10, tags=1000, repos=1000, gets=20, gc_repos=1000,
                 search_sizes=(1000, 100_000), search_rounds=30)

    started = time.time()
    root = tempfile.mkdtemp(prefix="berth-bench-")
    log(f"work dir {root}")
    if args.gc_only or args.search_only:
        try:
            table = render_gc(gc_rows(args, root, P)) if args.gc_only else render_search(search_rows(args, root, P))
            print(table)
            os.makedirs(os.path.dirname(args.out), exist_ok=True)
            with open(args.out, "w") as f:
                f.write(table)
        finally:
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
        return
    servers = []
    rows = []
    try:
        log("generating synthetic images")
        seq_layout = os.path.join(root, "img-seq")
        par_layout = os.path.join(root, "img-par")
        seq_tags, seq_total = make_image_set(seq_layout, "s", P["images"], P["layers"], P["layer_size"])
        par_tags, par_total = make_image_set(par_layout, "p", P["images"], P["layers"], P["layer_size"])
        big_path = os.path.join(root, "big.bin")
        h = hashlib.sha256()
        with open(big_path, "wb") as f:
            left = P["big"]
            while left:
                chunk = os.urandom(min(left, 8 * MIB))
                h.update(chunk)
                f.write(chunk)
                left -= len(chunk)
        big_digest = "sha256:" + h.hexdigest()
        lua = os.path.join(root, "accept.lua")
        with open(lua, "w") as f:
            f.write(f'wrk.method = "GET"\nwrk.headers["Accept"] = "{ACCEPT}"\n')

        berth = start_berth(args.berth, root)
        servers.append(berth)
        dist = start_distribution(args.distribution, root)
        servers.append(dist)
        log(f"berth on {berth.addr} (pid {berth.proc.pid}), distribution on {dist.addr} (pid {dist.proc.pid})")

        def both(label, fn):
            out = []
            for s in servers:
                # Flush dirty pages left by the previous phase (distribution
                # does not fsync uploads), so neither server pays for the
                # other's background writeback.
                os.sync()
                t0 = time.perf_counter()
                try:
                    v = fn(s)
                except Exception as e:  # keep going: one failure must not hide the rest
                    log(f"{s.name}: {label} failed: {e}")
                    v = None
                log(f"{s.name}: {label}: {v if not isinstance(v, float) else round(v, 3)} "
                    f"({time.perf_counter() - t0:.1f} s)")
                out.append(v)
            return out

        b, d = both("push sequential", lambda s: push_sequential(s, seq_layout, seq_tags, seq_total))
        rows.append(("Push, sequential skopeo copy (MB/s)", b, d, 1, "higher"))
        b, d = both("push parallel", lambda s: push_parallel(s, par_layout, par_tags, par_total))
        rows.append(("Push, 4 parallel skopeo copies (MB/s)", b, d, 1, "higher"))
        b, d = both("pull", lambda s: pull(s, seq_tags, seq_total, os.path.join(root, f"pull-{s.name}")))
        rows.append(("Pull, sequential skopeo copy (MB/s)", b, d, 1, "higher"))

        big_mib = P["big"] // MIB
        b, d = both("monolithic PUT", lambda s: raw_put(s, big_path, big_digest, P["big"], P["tries"]))
        put_row = (f"Monolithic PUT of one {big_mib} MiB blob, best of {P['tries']} (MB/s)", b, d, 1, "higher")
        b, d = both("blob GET", lambda s: blob_get(s, big_digest, P["big"], P["tries"]))
        rows.append((f"GET of one {big_mib} MiB blob, best of {P['tries']} (MB/s)", b, d, 1, "higher"))
        rows.append(put_row)

        manifest_path = f"/v2/bench/seq-{seq_tags[0]}/manifests/latest"
        for conns in (16, 64):
            res = both(f"manifest GET c={conns}",
                       lambda s, conns=conns: wrk_manifest(s, manifest_path, conns, P["wrk_secs"], lua))
            rps = [r[0] if r else None for r in res]
            p99 = [r[1] if r else None for r in res]
            rows.append((f"Manifest GET, {conns} connections (req/s)", rps[0], rps[1], 0, "higher"))
            rows.append((f"Manifest GET, {conns} connections, p99 (ms)", p99[0], p99[1], 2, "lower"))

        n_tags, n_repos = P["tags"], P["repos"]
        both("fill tags", lambda s: fill_tags(s, "bench/tags", n_tags))

        def check_tags(data):
            got = len(json.loads(data).get("tags") or [])
            if got != n_tags:
                log(f"warning: tags/list returned {got} tags, expected {n_tags}")

        b, d = both("tags list", lambda s: median_get_ms(s, "/v2/bench/tags/tags/list", P["gets"], check_tags))
        rows.append((f"Tags list, {n_tags} tags, median of {P['gets']} (ms)", b, d, 2, "lower"))

        both("fill repos", lambda s: fill_repos(s, n_repos))

        def check_catalog(data):
            got = len(json.loads(data).get("repositories") or [])
            if got != n_repos:
                log(f"warning: catalog returned {got} repositories, expected {n_repos}")

        b, d = both("catalog", lambda s: median_get_ms(s, f"/v2/_catalog?n={n_repos}", P["gets"], check_catalog))
        rows.append((f"Catalog, n={n_repos} of {n_repos}+ repos, median of {P['gets']} (ms)", b, d, 2, "lower"))

        hwm = [vm_hwm_kib(s.proc.pid) / 1024 for s in servers]
        rows.append(("Peak RSS over the run, VmHWM (MiB)", hwm[0], hwm[1], 1, "lower"))
        for s in servers:
            s.stop()
        disk = [du_bytes(s.data_dir) / MB for s in servers]
        rows.append(("Data dir size at the end, du -sb (MB)", disk[0], disk[1], 1, "lower"))

        rev = subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout.strip()
        dver = subprocess.run([args.distribution, "--version"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True).stdout.strip()
        meta = dict(
            when=time.strftime("%Y-%m-%d %H:%M:%S"), mode="quick" if args.quick else "full",
            cpus=os.cpu_count(), berth=os.path.relpath(args.berth, REPO_ROOT) if args.berth.startswith(REPO_ROOT) else args.berth,
            berth_rev=f"git {rev}" if rev else "unknown revision", dist_version=dver,
            payload=f"{P['images']} images x {P['layers']} layers x {P['layer_size'] / MB:.1f} MB "
                    f"= {seq_total / MB:.0f} MB per set",
            elapsed=time.time() - started)
        table = render(rows, meta)
        try:
            table += render_security(security_rows(args, root, P, big_path, big_digest))
        except Exception as e:  # the comparison above stands on its own
            log(f"security-feature rows failed: {e}")
        try:
            table += render_gc(gc_rows(args, root, P))
        except Exception as e:  # likewise
            log(f"garbage-collection rows failed: {e}")
        try:
            table += render_search(search_rows(args, root, P))
        except Exception as e:  # likewise
            log(f"search rows failed: {e}")
        print(table)
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(table)
        log(f"wrote {args.out}")
    finally:
        for s in servers:
            s.stop()
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
