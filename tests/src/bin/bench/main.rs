//! gapsync-bench: the side-by-side benchmark harness (BENCHMARKS.md). Runs each scenario
//! several times, alternating gapsync and its baseline on the same machine in the same run,
//! and prints a table of medians, CPU seconds per GiB, peak RSS and the ratio to the baseline.
//!   cargo run --release -p gapsync-tests --bin gapsync-bench -- [--tiny] [--runs N] [--only S1,S3,T]
//! Figures are printed, never asserted: a slow machine prints lower figures, it does not fail.

mod measure;
mod runs;
mod tables;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use gapsync_tests::{bin, make_file, profile};

use measure::{Sample, median, quantile};
use runs::{Drop, Setup, baseline, gapsync};

#[derive(Parser, Debug)]
#[command(
    name = "gapsync-bench",
    about = "Side-by-side benchmarks of gapsync and its baselines"
)]
struct Args {
    /// A few MB per scenario and one run each: checks that the harness works (CI).
    #[arg(long)]
    tiny: bool,
    /// Runs per scenario and side (default 3, 1 with --tiny; the diode scenario D: 10).
    #[arg(long)]
    runs: Option<usize>,
    /// Only these scenarios (comma-separated: S1,S2,S3,S4,S5,S6,RSS,D, and the table
    /// scenarios T1,T2 or T for both; T1 includes the peak RSS at scale 50 and 200).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Only these rows of scenario 4, as PROFILE@MS (e.g. forward-gate-pipelined@0).
    #[arg(long, value_delimiter = ',')]
    s4_rows: Vec<String>,
    /// Size of the large file of scenarios 1, 2 and 6 in MiB (default 2048, 8 with --tiny).
    #[arg(long)]
    file_mib: Option<u64>,
    /// Number of small files of scenarios 3 and 6 (default 20000, 300 with --tiny).
    #[arg(long)]
    small_files: Option<u64>,
    /// pgbench scale of table scenario T1 (default 50, 1 with --tiny).
    #[arg(long)]
    pgbench_scale: Option<u32>,
    /// pgbench scale of T1's second peak-RSS run (default 200, none with --tiny; 0 skips it).
    #[arg(long)]
    pgbench_rss_scale: Option<u32>,
    /// Folder on disk for spools, landing folders and sample data.
    #[arg(long, default_value = "/var/tmp")]
    disk: PathBuf,
    /// Folder on tmpfs for scenario 2.
    #[arg(long, default_value = "/dev/shm")]
    tmpfs: PathBuf,
}

/// Sizes of everything, full or tiny.
#[derive(Debug)]
struct Scale {
    runs: usize,
    big_file: u64,
    small_files: u64,
    s4_files: u64,
    s5_secs: u64,
    sparse: u64,
    diode_runs: usize,
    diode_bytes: u64,
}

/// One line of the table.
#[derive(Debug)]
struct Row {
    name: String,
    unit: &'static str,
    value: f64,
    /// The baseline's median, or the computed bound.
    base: Option<f64>,
    base_label: String,
    gap: Vec<Sample>,
    base_cpu_per_gib: Option<f64>,
    target: String,
    met: Option<bool>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sc = if args.tiny {
        Scale {
            runs: args.runs.unwrap_or(1),
            big_file: 8 << 20,
            small_files: 300,
            s4_files: 8,
            s5_secs: 2,
            sparse: 64 << 20,
            diode_runs: 1,
            diode_bytes: 8 << 20,
        }
    } else {
        Scale {
            runs: args.runs.unwrap_or(3),
            big_file: 2 << 30,
            small_files: 20_000,
            s4_files: 200,
            s5_secs: 30,
            sparse: 10 << 30,
            diode_runs: args.runs.unwrap_or(10),
            diode_bytes: 1 << 30,
        }
    };
    runs::PAUSE_AFTER_CLEAR.store(
        if args.tiny { 0 } else { 6 },
        std::sync::atomic::Ordering::Relaxed,
    );
    let mut sc = sc;
    if let Some(m) = args.file_mib {
        sc.big_file = m << 20;
    }
    if let Some(n) = args.small_files {
        sc.small_files = n;
    }
    let want = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    // GAPSYNC_BENCH_KEEP=1 leaves the work folder on disk: deleting its 100,000+ small files
    // would slow the creates of a bench started within the next minutes (runs::fresh_folder).
    let work = tempfile::Builder::new()
        .prefix("gapsync-bench-")
        .disable_cleanup(std::env::var_os("GAPSYNC_BENCH_KEEP").is_some())
        .tempdir_in(&args.disk)
        .context("work folder on disk")?;
    let shm = tempfile::Builder::new()
        .prefix("gapsync-bench-")
        .tempdir_in(&args.tmpfs)
        .context("work folder on tmpfs")?;
    let w = work.path();
    let rawcopy = bin("gapsync-rawcopy").display().to_string();
    println!("gapsync-bench: {}", machine());
    let mut rows = Vec::new();
    let big = w.join("big.bin");
    if want("S1") || want("S2") || want("S6") {
        eprintln!("preparing a {} MiB sample file", sc.big_file >> 20);
        make_big(&big, sc.big_file)?;
    }
    let tree = w.join("tree");
    if want("S3") || want("S6") {
        eprintln!("preparing {} files of 4 KiB in 100 folders", sc.small_files);
        for i in 0..sc.small_files {
            make_file(
                &tree.join(format!("d{:03}/f{i:06}.dat", i % 100)),
                4096,
                i + 1,
            );
        }
    }
    let disk_dest = w.join("dest");
    let shm_dest = shm.path().join("dest");
    for d in [&disk_dest, &shm_dest] {
        std::fs::create_dir_all(d)?;
    }
    let big_drop = Drop::Files(vec![(big.clone(), "big.bin".into())]);
    let tree_drop = Drop::Tree {
        master: tree.clone(),
        files: sc.small_files,
    };
    let loopback = |dest: &Path, keyed, keep_landed| Setup {
        profile: "loopback".into(),
        dest: dest.to_path_buf(),
        keyed,
        keep_landed,
        sim_latency_ms: None,
        sim_extra: Vec::new(),
    };
    let copy_to = |out: &Path, fsync: bool| {
        format!(
            "{rawcopy} recv --listen 127.0.0.1:{{PORT}} --out {}{}",
            out.display(),
            if fsync { " --fsync" } else { "" }
        )
    };
    let send_big = format!(
        "{rawcopy} send --to 127.0.0.1:{{PORT}} --input {}",
        big.display()
    );
    let tar_send = format!(
        "tar -C {} -cf - . | {rawcopy} send --to 127.0.0.1:{{PORT}} --input -",
        tree.display()
    );
    let tar_recv = |dest: &Path| {
        format!(
            "{rawcopy} recv --listen 127.0.0.1:{{PORT}} --out - | tar -C {0} -xf - && sync -f {0}",
            dest.display()
        )
    };
    let bytes_big = sc.big_file;
    let bytes_tree = runs::dir_bytes(&tree);
    let files = |s: &Sample| s.files_per_s();
    let mbs = |s: &Sample| s.mb_per_s();

    // A run of gapsync and one of its baseline: the large file, or the tree of small files.
    let big_runs = |name: &str, dest: &Path, keyed: bool, fsync: bool| {
        alternate(sc.runs, name, Some(dest), |_| {
            let g = gapsync(&loopback(dest, keyed, false), &big_drop, timeout(bytes_big))?;
            let to = copy_to(&dest.join("big.bin"), fsync);
            let b = baseline(w, &send_big, &to, bytes_big, 1)?;
            Ok((g.sample, b))
        })
    };
    let tree_runs = |name: &str, keyed: bool| {
        // Each run lands in folders of its own, kept until the end (runs::fresh_folder).
        alternate(sc.runs, name, None, |i| {
            let dest = runs::fresh_folder(&disk_dest, &format!("{name}-{i}-gapsync"))?;
            let setup = loopback(&dest, keyed, true);
            let g = gapsync(&setup, &tree_drop, timeout(bytes_tree * 50))?;
            let to = tar_recv(&runs::fresh_folder(&disk_dest, &format!("{name}-{i}-tar"))?);
            let b = baseline(w, &tar_send, &to, bytes_tree, sc.small_files)?;
            Ok((g.sample, b))
        })
    };
    if want("S1") {
        let (g, b) = big_runs("S1", &disk_dest, false, true)?;
        let name = format!("S1 {} MiB file to disk, loopback", bytes_big >> 20);
        rows.push(compare(&name, "MB/s", g, b, mbs, 0.9));
    }
    if want("S2") {
        let (g, b) = big_runs("S2", &shm_dest, false, false)?;
        let name = format!("S2 {} MiB file to tmpfs, loopback", bytes_big >> 20);
        let mut row = compare(&name, "MB/s", g, b, mbs, 0.6);
        let cpu = median(
            row.gap
                .iter()
                .map(|s| s.cpu_per_gib().iter().sum())
                .collect(),
        );
        row.target
            .push_str(&format!("; CPU <= 1.0 s/GiB (is {cpu:.2})"));
        row.met = row.met.map(|m| m && cpu <= 1.0);
        rows.push(row);
    }
    if want("S3") {
        let (g, b) = tree_runs("S3", false)?;
        let name = format!("S3 {} files of 4 KiB in 100 folders, disk", sc.small_files);
        let mut row = compare(&name, "files/s", g, b, files, 0.5);
        row.target.push_str("; >= 5000 files/s");
        row.met = row.met.map(|m| m && row.value >= 5000.0);
        rows.push(row);
    }
    if want("S4") {
        rows.extend(scenario4(&sc, w, &shm_dest, &args.s4_rows)?);
    }
    if want("S5") {
        rows.push(scenario5(&sc, &disk_dest)?);
    }
    if want("S6") {
        let (g, b) = big_runs("S6a", &disk_dest, true, true)?;
        rows.push(compare(
            "S6 = S1 encrypted (ChaCha20-Poly1305)",
            "MB/s",
            g,
            b,
            mbs,
            0.5,
        ));
        let (g, b) = tree_runs("S6b", true)?;
        rows.push(compare("S6 = S3 encrypted", "files/s", g, b, files, 0.5));
    }
    if want("RSS") {
        rows.push(sparse_rss(&sc, w, &disk_dest)?);
    }
    if want("D") {
        rows.extend(diode(&sc, w, &disk_dest)?);
    }
    let (t1, t2) = (want("T") || want("T1"), want("T") || want("T2"));
    if t1 || t2 {
        let ts = tables::TableScale {
            runs: sc.runs,
            scale: args.pgbench_scale.unwrap_or(if args.tiny { 1 } else { 50 }),
            rss_scale: args
                .pgbench_rss_scale
                .or((!args.tiny).then_some(200))
                .filter(|&s| s > 0),
            lag_secs: if args.tiny { 5 } else { 30 },
            t1,
            t2,
        };
        rows.extend(tables::scenarios(ts, w)?);
    }
    let table = render(&rows);
    println!("\n{table}");
    let _ = std::fs::remove_file(&big);
    Ok(())
}

/// Per-run timeout: generous (10 MB/s) so that only a stuck run fails.
fn timeout(bytes: u64) -> Duration {
    Duration::from_secs(60 + bytes / 10_000_000)
}

/// Runs `one` (a gapsync run then a baseline run, given the run number) `runs` times, printing
/// each run and clearing `dest` after each when given.
fn alternate(
    runs: usize,
    name: &str,
    dest: Option<&Path>,
    mut one: impl FnMut(usize) -> anyhow::Result<(Sample, Sample)>,
) -> anyhow::Result<(Vec<Sample>, Vec<Sample>)> {
    let (mut g, mut b) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let (gs, bs) = one(i + 1).with_context(|| format!("{name} run {}", i + 1))?;
        if let Some(dest) = dest {
            runs::clear(dest)?;
        }
        eprintln!(
            "{name} run {}: gapsync {:.1} MB/s {:.0} files/s in {:.2} s; baseline {:.1} MB/s {:.0} files/s in {:.2} s",
            i + 1,
            gs.mb_per_s(),
            gs.files_per_s(),
            gs.secs,
            bs.mb_per_s(),
            bs.files_per_s(),
            bs.secs
        );
        g.push(gs);
        b.push(bs);
    }
    Ok((g, b))
}

fn compare(
    name: &str,
    unit: &'static str,
    gap: Vec<Sample>,
    base: Vec<Sample>,
    f: impl Fn(&Sample) -> f64,
    min_ratio: f64,
) -> Row {
    let value = median(gap.iter().map(&f).collect());
    let b = median(base.iter().map(&f).collect());
    Row {
        name: name.to_owned(),
        unit,
        value,
        base: Some(b),
        base_label: "baseline".into(),
        base_cpu_per_gib: Some(median(
            base.iter().map(|s| s.cpu_per_gib().iter().sum()).collect(),
        )),
        target: format!(">= {min_ratio}x baseline"),
        met: Some(value >= min_ratio * b),
        gap,
    }
}

/// Scenario 4: 1 MiB files through the gate simulator against window x frame / RTT.
fn scenario4(sc: &Scale, w: &Path, dest: &Path, only: &[String]) -> anyhow::Result<Vec<Row>> {
    let master = w.join("s4");
    let mut list = Vec::new();
    for i in 0..sc.s4_files {
        let p = master.join(format!("m{i:04}.dat"));
        make_file(&p, 1 << 20, 1000 + i);
        list.push((p, format!("m{i:04}.dat")));
    }
    let drop = Drop::Files(list);
    let bytes = sc.s4_files << 20;
    // The link's own rate: a raw copy of the same bytes through the gate simulator (which
    // relays in user space) into /dev/null. The bound is capped by what the link and the
    // landing folder allow together: the same copy into a file of the folder gapsync lands in
    // (tmpfs here), made durable, alternating with each gapsync run of the row. A transfer
    // that lands files cannot outrun a plain copy that lands the same bytes in the same place
    // (BENCHMARKS.md, scenario 4).
    let link_file = w.join("link.bin");
    make_big(&link_file, bytes)?;
    let landed = dest.join("link-copy.bin");
    let null = Path::new("/dev/null");
    let link = median(
        (0..sc.runs)
            .map(|_| runs::link_through_sim(w, &link_file, bytes, null, None).map(|c| c.mb_per_s))
            .collect::<anyhow::Result<Vec<_>>>()?,
    ) * 1e6;
    let base_rtt = runs::loopback_rtt()?;
    let mut rows = Vec::new();
    for prof in ["syskeeper-2000", "forward-gate-pipelined"] {
        let p = profile(prof);
        for latency in [0u64, 50] {
            if !only.is_empty() && !only.contains(&format!("{prof}@{latency}")) {
                continue;
            }
            let setup = Setup {
                profile: prof.into(),
                dest: dest.to_path_buf(),
                keyed: false,
                keep_landed: false,
                sim_latency_ms: Some(latency),
                sim_extra: Vec::new(),
            };
            // The floor for any sender and receiver that wait for the gate's answers: the same
            // raw copy, cut into this profile's frames, each answered once written, through
            // the simulator at this latency (no digest, no journal, no commit).
            let acked = runs::Acked {
                frame: p.max_frame_bytes,
                window: p.window.get(),
                latency_ms: latency,
            };
            let (mut gap, mut to_dest, mut raw_acked) = (Vec::new(), Vec::new(), Vec::new());
            for i in 0..sc.runs {
                to_dest.push(runs::link_through_sim(w, &link_file, bytes, &landed, None)?.mb_per_s);
                raw_acked.push(runs::link_through_sim(
                    w,
                    &link_file,
                    bytes,
                    &landed,
                    Some(acked),
                )?);
                let r = gapsync(&setup, &drop, timeout(bytes * 20))
                    .with_context(|| format!("S4 {prof} {latency} ms run {}", i + 1))?;
                let floor = raw_acked.last().copied().unwrap_or_default();
                eprintln!(
                    "S4 {prof} {latency} ms run {}: {:.1} MB/s, machine busy {:.2} cores (the floor: {:.1} MB/s, {:.2} cores)",
                    i + 1,
                    r.sample.mb_per_s(),
                    r.sample.busy_cores,
                    floor.mb_per_s,
                    floor.busy_cores,
                );
                gap.push(r.sample);
            }
            // A frame needs its serialisation time plus the round trip before its ack returns.
            let frame = p.max_frame_bytes as f64;
            let rtt = base_rtt + 2.0 * latency as f64 / 1e3 + frame / link;
            let window = f64::from(p.window.get()) * frame / rtt;
            let link_landed = median(to_dest) * 1e6;
            let floor_busy = median(raw_acked.iter().map(|c| c.busy_cores).collect());
            let raw_acked = median(raw_acked.iter().map(|c| c.mb_per_s).collect());
            let busy = median(gap.iter().map(|s| s.busy_cores).collect());
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let bound = window.min(link_landed) / 1e6;
            let value = median(gap.iter().map(Sample::mb_per_s).collect());
            // For comparison: the bound capped by the link into /dev/null (landing nothing).
            let bare = window.min(link) / 1e6;
            rows.push(Row {
                name: format!("S4 {} x 1 MiB, {prof}, +{latency} ms one way", sc.s4_files),
                unit: "MB/s",
                value,
                base: Some(bound),
                base_label: format!(
                    "window x frame / RTT, RTT {:.2} ms, capped by a raw copy through the simulator into the landing folder at {:.0} MB/s; into /dev/null {:.0} MB/s, against which {:.2}x; the raw copy acked per frame like this profile {raw_acked:.0} MB/s ({:.2}x the bound), against which {:.2}x; machine busy (of {cores} cores) {busy:.2} cores during gapsync, {floor_busy:.2} during the acked raw copy",
                    rtt * 1e3,
                    link_landed / 1e6,
                    link / 1e6,
                    value / bare,
                    raw_acked / bound,
                    value / raw_acked
                ),
                gap,
                base_cpu_per_gib: None,
                target: ">= 0.9x bound".into(),
                met: Some(value >= 0.9 * bound),
            });
        }
    }
    let _ = std::fs::remove_file(&link_file);
    Ok(rows)
}

/// Scenario 5: latency of 1 KiB files dropped at 100 per second.
fn scenario5(sc: &Scale, dest: &Path) -> anyhow::Result<Row> {
    let setup = Setup {
        profile: "loopback".into(),
        dest: dest.to_path_buf(),
        keyed: false,
        keep_landed: false,
        sim_latency_ms: None,
        sim_extra: Vec::new(),
    };
    let drop = Drop::Paced {
        count: sc.s5_secs * 100,
        size: 1024,
        per_second: 100,
    };
    let r = gapsync(&setup, &drop, Duration::from_secs(sc.s5_secs + 60))?;
    let l = r.latencies_ms;
    let (p50, p99) = (quantile(l.clone(), 0.5), quantile(l.clone(), 0.99));
    let max = l.iter().copied().fold(0.0, f64::max);
    Ok(Row {
        name: format!(
            "S5 latency, 1 KiB files at 100/s for {} s, disk",
            sc.s5_secs
        ),
        unit: "ms p50",
        value: p50,
        base: None,
        base_label: format!("p99 {p99:.1} ms, max {max:.1} ms ({} files)", l.len()),
        gap: vec![r.sample],
        base_cpu_per_gib: None,
        target: "p50 <= 20 ms, p99 <= 100 ms".into(),
        met: Some(p50 <= 20.0 && p99 <= 100.0),
    })
}

/// The diode link: one large file over `udp` with the `udp-loopback` profile and stock kernel
/// settings, 10 runs (1 with --tiny), with 0% and 1% loss injected by the simulator.
fn diode(sc: &Scale, w: &Path, dest: &Path) -> anyhow::Result<Vec<Row>> {
    let (runs, size) = (sc.diode_runs, sc.diode_bytes);
    let file = w.join("diode.bin");
    make_big(&file, size)?;
    let drop = Drop::Files(vec![(file.clone(), "diode.bin".into())]);
    let mut rows = Vec::new();
    for loss in [0u32, 1] {
        let setup = Setup {
            profile: "udp-loopback".into(),
            dest: dest.to_path_buf(),
            keyed: false,
            keep_landed: false,
            sim_latency_ms: None,
            sim_extra: if loss == 0 {
                Vec::new()
            } else {
                vec!["--loss-percent".into(), loss.to_string()]
            },
        };
        let (mut gap, mut failed) = (Vec::new(), 0);
        for i in 0..runs {
            match gapsync(&setup, &drop, Duration::from_secs(60 + size / 20_000_000)) {
                Ok(r) => {
                    eprintln!(
                        "D {loss}% loss run {}: {:.1} MB/s, CPU s/GiB {:.2} + {:.2}",
                        i + 1,
                        r.sample.mb_per_s(),
                        r.sample.cpu_per_gib()[0],
                        r.sample.cpu_per_gib()[1]
                    );
                    gap.push(r.sample);
                }
                Err(e) => {
                    failed += 1;
                    eprintln!("D {loss}% loss run {}: FAILED: {e:#}", i + 1);
                    runs::clear(dest)?;
                }
            }
        }
        let ok = gap.len();
        let value = if ok == 0 {
            0.0
        } else {
            median(gap.iter().map(Sample::mb_per_s).collect())
        };
        let cpu = if ok == 0 {
            f64::NAN
        } else {
            median(gap.iter().map(|s| s.cpu_per_gib().iter().sum()).collect())
        };
        rows.push(Row {
            name: format!(
                "D diode {} MiB over udp, udp-loopback, {loss}% loss{}",
                size >> 20,
                if loss > 0 {
                    " (through the simulator)"
                } else {
                    ""
                }
            ),
            unit: "MB/s",
            value,
            base: None,
            base_label: format!(
                "{ok} of {runs} succeeded ({failed} failed); sender + receiver {cpu:.2} CPU s/GiB"
            ),
            base_cpu_per_gib: None,
            target: "all succeed, >= 300 MB/s, <= 4 CPU s/GiB".into(),
            met: Some(ok == runs && value >= 300.0 && cpu <= 4.0),
            gap,
        });
    }
    let _ = std::fs::remove_file(&file);
    Ok(rows)
}

/// Peak RSS with one large sparse file (reads as zeros, lands as a full file).
fn sparse_rss(sc: &Scale, w: &Path, dest: &Path) -> anyhow::Result<Row> {
    let sparse = w.join("sparse.bin");
    std::fs::File::create(&sparse)?.set_len(sc.sparse)?;
    let setup = Setup {
        profile: "loopback".into(),
        dest: dest.to_path_buf(),
        keyed: false,
        keep_landed: false,
        sim_latency_ms: None,
        sim_extra: Vec::new(),
    };
    let r = gapsync(
        &setup,
        &Drop::Files(vec![(sparse.clone(), "sparse.bin".into())]),
        timeout(sc.sparse),
    )?;
    let _ = std::fs::remove_file(&sparse);
    let rss = r.sample.rss_kib;
    Ok(Row {
        name: format!("RSS {} MiB sparse file, disk", sc.sparse >> 20),
        unit: "MB/s",
        value: r.sample.mb_per_s(),
        base: None,
        base_label: String::new(),
        base_cpu_per_gib: None,
        target: "peak RSS <= 64 MiB".into(),
        met: Some(rss.iter().all(|&k| k <= 64 * 1024)),
        gap: vec![r.sample],
    })
}

/// Writes `len` pseudo-random bytes to `path` in 16 MiB pieces.
fn make_big(path: &Path, len: u64) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut left = len;
    let mut seed = 7;
    while left > 0 {
        let n = left.min(16 << 20);
        f.write_all(&gapsync_tests::fill(seed, n as usize))?;
        left -= n;
        seed += 1;
    }
    f.into_inner()?.sync_all()?;
    Ok(())
}

/// Cores, memory and the disk under /var/tmp, for the table's heading.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    let disk = std::process::Command::new("df")
        .args(["-T", "/var/tmp"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .nth(1)
                .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        })
        .unwrap_or_default();
    format!(
        "{cores} cores, {:.1} GiB memory, /var/tmp on {disk}",
        mem as f64 / 1048576.0
    )
}

fn render(rows: &[Row]) -> String {
    let mut t = String::from(
        "| scenario | gapsync (median) | baseline or bound | ratio | CPU s/GiB sender + receiver (baseline) | peak RSS MiB sender / receiver | target | met |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let cpu = median(r.gap.iter().map(|s| s.cpu_per_gib()[0]).collect());
        let cpu_r = median(r.gap.iter().map(|s| s.cpu_per_gib()[1]).collect());
        let rss = |i: usize| r.gap.iter().map(|s| s.rss_kib[i]).max().unwrap_or(0) as f64 / 1024.0;
        let base = r.base.map_or(r.base_label.clone(), |b| {
            format!("{b:.1} {} ({})", r.unit, r.base_label)
        });
        let ratio = r
            .base
            .map_or("-".into(), |b| format!("{:.2}x", r.value / b.max(1e-9)));
        let base_cpu = r
            .base_cpu_per_gib
            .map_or(String::new(), |c| format!(" ({c:.2})"));
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        let _ = writeln!(
            t,
            "| {} | {:.1} {} | {base} | {ratio} | {cpu:.2} + {cpu_r:.2}{base_cpu} | {:.1} / {:.1} | {} | {met} |",
            r.name,
            r.value,
            r.unit,
            rss(0),
            rss(1),
            r.target,
        );
    }
    t
}
