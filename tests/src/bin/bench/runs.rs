//! One run of gapsync (real daemons on loopback, optionally through the gate simulator) and
//! one run of each baseline (gapsync-rawcopy, tar over it), each measured the same way.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use gapsync_tests::{Lab, bin, wait_until};

use crate::measure::{DeliveryLog, MachineCpu, Sample, cpu_seconds, read_gnu_time};

/// What is dropped into the spool at the start of a run.
#[derive(Debug, Clone)]
pub enum Drop {
    /// Hard links to these files, each renamed into the spool under its name.
    Files(Vec<(PathBuf, String)>),
    /// The sub-folders of this folder, linked (`cp -al`) and each renamed into the spool.
    Tree { master: PathBuf, files: u64 },
    /// `count` files of `size` bytes renamed into the spool at `per_second`.
    Paced {
        count: u64,
        size: usize,
        per_second: u64,
    },
}

/// How gapsync is set up for a run.
#[derive(Debug, Clone)]
pub struct Setup {
    pub profile: String,
    /// Landing folder (its contents are removed after the run unless `keep_landed`).
    pub dest: PathBuf,
    /// Leave the landed files in place (trees of small files: see [`fresh_folder`]).
    pub keep_landed: bool,
    pub keyed: bool,
    /// Through the gate simulator with this one-way latency in ms.
    pub sim_latency_ms: Option<u64>,
    /// Through the gate simulator with these arguments (e.g. UDP loss).
    pub sim_extra: Vec<String>,
}

/// Result of a gapsync run: the sample, and per-file latencies in ms for paced drops.
#[derive(Debug)]
pub struct GapsyncRun {
    pub sample: Sample,
    pub latencies_ms: Vec<f64>,
}

fn q(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

fn keygen(path: &Path) -> anyhow::Result<()> {
    let out = Command::new(bin("gapsync-sender"))
        .arg("keygen")
        .arg("--out")
        .arg(path)
        .output()?;
    if !out.status.success() {
        bail!("keygen: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Starts receiver, simulator and sender for `setup`, and waits until the sender is connected.
fn start(setup: &Setup) -> anyhow::Result<Lab> {
    let mut lab = Lab::new(&setup.profile);
    lab.dest = setup.dest.clone();
    std::fs::create_dir_all(&lab.dest)?;
    // Staging must share the landing folder's filesystem (tmpfs in scenario 2).
    let staging = setup.dest.with_file_name("staging");
    lab.receiver_pipe_extra = format!("staging = {}\n", q(&staging));
    if setup.keyed {
        let key = lab.path("pipe.key");
        keygen(&key)?;
        lab.receiver_pipe_extra += &format!(
            "require_auth = true\nkeys = [{{ id = 1, file = {} }}]\n",
            q(&key)
        );
        lab.sender_pipe_extra = format!(
            "key_file = {}\nkey_id = 1\nprotection = \"encrypt\"\n",
            q(&key)
        );
    }
    lab.start_receiver();
    if setup.sim_latency_ms.is_some() || !setup.sim_extra.is_empty() {
        let mut args = setup.sim_extra.clone();
        if let Some(ms) = setup.sim_latency_ms {
            args.extend(["--latency-ms".to_owned(), ms.to_string()]);
        }
        lab.start_sim(&args);
    }
    lab.start_sender();
    wait_until("the sender to connect", Duration::from_secs(30), || {
        let log = lab.sender_log();
        log.contains(" connected ") || log.contains("sending over the udp link")
    });
    Ok(lab)
}

/// Writes back what earlier steps left dirty (the previous run's clean-up, the hard links of
/// the drop) before a clock starts, so that neither side pays for the other's leftovers in
/// its first flush (a syncfs or `sync -f` flushes the whole filesystem).
fn settle_disks() {
    rustix::fs::sync();
}

/// Runs gapsync once: drops `drop` into the spool and waits until the receiver has logged every
/// file delivered. Time runs from the first rename into the spool to the last delivery line.
pub fn gapsync(setup: &Setup, drop: &Drop, timeout: Duration) -> anyhow::Result<GapsyncRun> {
    let lab = start(setup)?;
    let staging = lab.path("staging");
    std::fs::create_dir_all(&staging)?;
    let (pids, cpu0) = {
        let s = lab.sender.as_ref().context("sender")?.pid();
        let r = lab.receiver.as_ref().context("receiver")?.pid();
        ([s, r], [cpu_seconds(s), cpu_seconds(r)])
    };
    let mut log = DeliveryLog::new(&lab.path("rlogs"));
    let mut dropped: Vec<(String, SystemTime)> = Vec::new();
    let (expected, bytes) = prepare(drop, &staging)?;
    settle_disks();
    let t0 = SystemTime::now();
    let machine = MachineCpu::now();
    match drop {
        Drop::Files(files) => {
            for (_, name) in files {
                std::fs::rename(staging.join(name), lab.spool.join(name))?;
            }
        }
        Drop::Tree { .. } => {
            for e in std::fs::read_dir(&staging)?.flatten() {
                std::fs::rename(e.path(), lab.spool.join(e.file_name()))?;
            }
        }
        Drop::Paced {
            count, per_second, ..
        } => {
            let start = Instant::now();
            for i in 0..*count {
                let due = Duration::from_secs_f64(i as f64 / *per_second as f64);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
                let name = format!("p{i:06}.dat");
                std::fs::rename(staging.join(&name), lab.spool.join(&name))?;
                dropped.push((name, SystemTime::now()));
                log.poll();
            }
        }
    }
    let deadline = Instant::now() + timeout;
    while (log.delivered.len() as u64) < expected {
        if Instant::now() > deadline {
            bail!(
                "timed out: {} of {expected} files delivered\n{}",
                log.delivered.len(),
                lab.diagnostics()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
        log.poll();
    }
    let busy_cores = machine.cores_since();
    let cpu = [
        cpu_seconds(pids[0]) - cpu0[0],
        cpu_seconds(pids[1]) - cpu0[1],
    ];
    let rss_kib = [
        lab.sender.as_ref().map_or(0, |p| p.peak_rss_kib()),
        lab.receiver.as_ref().map_or(0, |p| p.peak_rss_kib()),
    ];
    let end = log.last.unwrap_or_else(SystemTime::now);
    let latencies_ms = dropped
        .iter()
        .filter_map(|(name, at)| {
            let got = log.delivered.get(name)?;
            Some(got.duration_since(*at).unwrap_or_default().as_secs_f64() * 1e3)
        })
        .collect();
    if std::env::var_os("GAPSYNC_BENCH_LOGS").is_some() {
        for l in lab.sender_log().lines().chain(lab.receiver_log().lines()) {
            if l.contains(" sent ")
                || l.contains("delivered")
                || l.contains("link summary")
                || l.contains("group commit")
                || l.contains("group landed")
                || l.contains("WARN")
                || l.contains("ERROR")
            {
                eprintln!("{l}");
            }
        }
    }
    drop_lab(lab, &setup.dest, setup.keep_landed)?;
    Ok(GapsyncRun {
        sample: Sample {
            secs: end.duration_since(t0).unwrap_or_default().as_secs_f64(),
            bytes,
            files: expected,
            cpu,
            rss_kib,
            busy_cores,
        },
        latencies_ms,
    })
}

/// Stops the daemons and removes the receiver's staging and, unless `keep`, the landing
/// folder's contents.
fn drop_lab(lab: Lab, dest: &Path, keep: bool) -> anyhow::Result<()> {
    std::mem::drop(lab);
    let _ = std::fs::remove_dir_all(dest.with_file_name("staging"));
    if keep { Ok(()) } else { clear(dest) }
}

/// A new, empty landing folder `<parent>/<name>` for one run of a tree of small files. Such
/// runs land in folders of their own that stay until the harness ends: ext4 without a journal
/// (the reference VM's disk) scans past every inode freed in the last 5 s, or 305 s while its
/// inode-table block is dirty, for each inode it allocates (`recently_deleted` in
/// `find_inode_bit`). Deleting one run's 20,000 files made the next run's creates pay that
/// scan, whichever side ran next, by an amount that depended on which block groups the two
/// runs shared: 2-4x swings between runs of either side.
pub fn fresh_folder(parent: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Puts what `drop` needs into `staging`; returns the number of files and bytes.
fn prepare(drop: &Drop, staging: &Path) -> anyhow::Result<(u64, u64)> {
    match drop {
        Drop::Files(files) => {
            let mut bytes = 0;
            for (master, name) in files {
                std::fs::hard_link(master, staging.join(name))
                    .with_context(|| format!("link {}", master.display()))?;
                bytes += std::fs::metadata(master)?.len();
            }
            Ok((files.len() as u64, bytes))
        }
        Drop::Tree { master, files } => {
            for e in std::fs::read_dir(master)?.flatten() {
                let st = Command::new("cp")
                    .arg("-al")
                    .arg(e.path())
                    .arg(staging)
                    .status()?;
                if !st.success() {
                    bail!("cp -al {} failed", e.path().display());
                }
            }
            Ok((*files, dir_bytes(master)))
        }
        Drop::Paced { count, size, .. } => {
            let data = vec![0x5au8; *size];
            for i in 0..*count {
                std::fs::write(staging.join(format!("p{i:06}.dat")), &data)?;
            }
            Ok((*count, count * *size as u64))
        }
    }
}

/// Total size of the regular files under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    gapsync_tests::tree_sizes(dir).values().sum()
}

/// Seconds to wait after clearing a landing folder (see [`clear`]); 0 in tiny mode.
pub static PAUSE_AFTER_CLEAR: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Removes everything inside `dir`, keeping `dir`; then syncs and pauses. ext4 skips inodes
/// freed in the last seconds when it allocates new ones (`recently_deleted`, 5 s once the inode
/// table is written back), which makes creating thousands of files right after deleting
/// thousands several times slower. The pause keeps one run's cleanup from slowing the next
/// (gapsync or baseline alike).
pub fn clear(dir: &Path) -> anyhow::Result<()> {
    let mut removed = false;
    for e in std::fs::read_dir(dir)?.flatten() {
        let p = e.path();
        if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
        removed = true;
    }
    let pause = PAUSE_AFTER_CLEAR.load(std::sync::atomic::Ordering::Relaxed);
    if removed && pause > 0 {
        Command::new("sync").status()?;
        std::thread::sleep(Duration::from_secs(pause));
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts `script` under GNU time, which writes "wall user system maxrss" to `timing`; its
/// standard error goes to `err`.
fn timed_sh(script: &str, timing: &Path, err: &Path) -> anyhow::Result<std::process::Child> {
    Ok(Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%e %U %S %M")
        .arg("-o")
        .arg(timing)
        .arg("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(err)?)
        .spawn()?)
}

/// The baseline: the sending `send_sh` and receiving `recv_sh` shell pipelines (with `{PORT}`
/// replaced), each under GNU time. Time runs from starting the sender until both have exited.
pub fn baseline(
    work: &Path,
    send_sh: &str,
    recv_sh: &str,
    bytes: u64,
    files: u64,
) -> anyhow::Result<Sample> {
    let port = free_port()?.to_string();
    let (ts, tr) = (work.join("send.time"), work.join("recv.time"));
    let (es, er) = (work.join("send.err"), work.join("recv.err"));
    let mut recv = timed_sh(&recv_sh.replace("{PORT}", &port), &tr, &er)?;
    wait_until("the baseline to listen", Duration::from_secs(10), || {
        std::fs::read_to_string(&er).is_ok_and(|t| t.contains("listening on"))
    });
    settle_disks();
    let t0 = Instant::now();
    let machine = MachineCpu::now();
    let mut send = timed_sh(&send_sh.replace("{PORT}", &port), &ts, &es)?;
    let (s, r) = (send.wait()?, recv.wait()?);
    let secs = t0.elapsed().as_secs_f64();
    let busy_cores = machine.cores_since();
    if !s.success() || !r.success() {
        let text = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        bail!(
            "baseline failed: send {s}: {}; receive {r}: {}",
            text(&es),
            text(&er)
        );
    }
    let (_, cpu_s, rss_s) = read_gnu_time(&ts)?;
    let (_, cpu_r, rss_r) = read_gnu_time(&tr)?;
    Ok(Sample {
        secs,
        bytes,
        files,
        cpu: [cpu_s, cpu_r],
        rss_kib: [rss_s, rss_r],
        busy_cores,
    })
}

/// What one raw copy through the simulator measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Copied {
    pub mb_per_s: f64,
    /// Cores the machine kept busy meanwhile (the copy's two sides and the simulator).
    pub busy_cores: f64,
}

/// A raw copy that waits for the gate's answers as gapsync does (`gapsync-rawcopy --frame`).
#[derive(Debug, Clone, Copy)]
pub struct Acked {
    /// Frame size in bytes, header included (the profile's `max_frame_bytes`).
    pub frame: u32,
    /// Frames unanswered at most (the profile's `window`).
    pub window: u32,
    /// The simulator's added one-way latency.
    pub latency_ms: u64,
}

/// A raw copy of `file` through the gate simulator into `out`: into /dev/null it is
/// the rate of the simulated link itself; into a file of the landing folder, what the link and
/// that folder's storage allow together (the file is removed afterwards). With `acked`, each
/// frame waits for its one-byte answer within the window, through the simulator's latency.
///
/// A copy counts when the receiving side got every byte (its `received N bytes` line). One that
/// fails is run again, twice at most: a failed copy says nothing about the link. (The sending
/// side's final `shutdown` has now and then found the connection already gone, ENOTCONN, cause
/// not found; it is printed, and no longer fails a copy whose bytes all arrived.) After three
/// failures the copy's figures are NaN, with a WARNING naming the last error.
pub fn link_through_sim(
    work: &Path,
    file: &Path,
    bytes: u64,
    out: &Path,
    acked: Option<Acked>,
) -> anyhow::Result<Copied> {
    let mut attempt = 1;
    loop {
        match link_through_sim_once(work, file, bytes, out, acked) {
            Err(e) if attempt < 3 => {
                eprintln!("the raw copy through the simulator failed ({e:#}); running it again");
                attempt += 1;
            }
            // The bound is then unknown (NaN in the table), not a reason to lose the rest of
            // the run: the figures are printed, never asserted.
            Err(e) => {
                eprintln!(
                    "WARNING: the raw copy through the simulator failed 3 times ({e:#}); this row's bound is unknown (NaN)"
                );
                return Ok(Copied {
                    mb_per_s: f64::NAN,
                    busy_cores: f64::NAN,
                });
            }
            ok => return ok,
        }
    }
}

fn link_through_sim_once(
    work: &Path,
    file: &Path,
    bytes: u64,
    out: &Path,
    acked: Option<Acked>,
) -> anyhow::Result<Copied> {
    use gapsync_tests::Proc;
    // A failed attempt leaves its logs; the next one must not read the old listening lines.
    let _ = std::fs::remove_file(work.join("link-recv.stderr"));
    let _ = std::fs::remove_file(work.join("link-sim.stderr"));
    let port = free_port()?;
    let into_file = out != Path::new("/dev/null");
    let mut recv_args = vec![
        "recv".to_owned(),
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--out".to_owned(),
        out.display().to_string(),
    ];
    // Into a file the copy is made durable, as gapsync's commit is.
    if into_file {
        recv_args.push("--fsync".to_owned());
    }
    let mut send_args = vec!["send".to_owned()];
    let mut sim_args = vec![
        "--listen".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--forward".to_owned(),
        format!("127.0.0.1:{port}"),
    ];
    if let Some(a) = acked {
        recv_args.extend(["--frame".to_owned(), a.frame.to_string()]);
        send_args.extend([
            "--frame".to_owned(),
            a.frame.to_string(),
            "--window".to_owned(),
            a.window.to_string(),
        ]);
        sim_args.extend(["--latency-ms".to_owned(), a.latency_ms.to_string()]);
    }
    let mut recv = Proc::spawn("link-recv", &bin("gapsync-rawcopy"), &recv_args, work);
    wait_until("the link receiver", Duration::from_secs(10), || {
        recv.stderr_text().contains("listening on")
    });
    let sim = Proc::spawn("link-sim", &bin("gapsync-gate-sim"), &sim_args, work);
    let mut addr = String::new();
    wait_until("the link simulator", Duration::from_secs(10), || {
        addr = sim
            .stderr_text()
            .split("listening on ")
            .nth(1)
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_default()
            .to_owned();
        !addr.is_empty()
    });
    let t0 = Instant::now();
    let machine = MachineCpu::now();
    let st = Command::new(bin("gapsync-rawcopy"))
        .args(&send_args)
        .args(["--to", &addr, "--input"])
        .arg(file)
        .status()?;
    if !st.success() {
        bail!(
            "the raw copy through the simulator failed: {st}; its receiving side said {:?}, the simulator {:?}",
            recv.stderr_text().trim(),
            sim.stderr_text().trim()
        );
    }
    wait_until(
        "the link receiver to finish",
        Duration::from_secs(300),
        || !recv.alive(),
    );
    let secs = t0.elapsed().as_secs_f64();
    let busy_cores = machine.cores_since();
    // A receiving side that failed (a reset, a CRC mismatch) landed less than was timed.
    let recv_err = recv.stderr_text();
    if recv_err.contains("Error") {
        bail!("the raw copy's receiving side failed: {}", recv_err.trim());
    }
    let received = format!("received {bytes} bytes");
    if !recv_err.contains(&received) {
        bail!(
            "the raw copy's receiving side did not get all {bytes} bytes: it said {:?}, the simulator {:?}",
            recv_err.trim(),
            sim.stderr_text().trim()
        );
    }
    if into_file {
        std::fs::remove_file(out).with_context(|| format!("removing {}", out.display()))?;
    }
    let _ = std::fs::remove_file(work.join("link-recv.stderr"));
    let _ = std::fs::remove_file(work.join("link-sim.stderr"));
    Ok(Copied {
        mb_per_s: bytes as f64 / 1e6 / secs,
        busy_cores,
    })
}

/// The round trip of one byte over loopback TCP, in seconds (median of 200).
pub fn loopback_rtt() -> anyhow::Result<f64> {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = l.accept()?;
        s.set_nodelay(true)?;
        let mut b = [0u8; 1];
        while s.read(&mut b)? == 1 {
            s.write_all(&b)?;
        }
        Ok(())
    });
    let mut c = std::net::TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    let mut times = Vec::new();
    let mut b = [0u8; 1];
    for _ in 0..200 {
        let t = Instant::now();
        c.write_all(&b)?;
        c.read_exact(&mut b)?;
        times.push(t.elapsed().as_secs_f64());
    }
    drop(c);
    let _ = echo.join();
    Ok(crate::measure::median(times))
}
