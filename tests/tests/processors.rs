//! A pipe's processors as an operator sees them, on real processes (receiver, gate simulator,
//! sender): what the filter admits lands and nothing else; `history = false` / `realtime =
//! false` keep what their rule leaves out in the spool; `compress` lands text byte-identical with
//! far fewer bytes through the gate, also after a reconnect; `rate_limit` keeps the bytes through
//! the gate under the limit plus one burst.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use gapsync_tests::{Lab, check_config, count_lines, make_file, tree, wait_until};

/// The value of `key` in the last `summary` line of `log`.
fn last_summary(log: &str, key: &str) -> Option<u64> {
    let line = log.lines().rev().find(|l| l.contains(" summary"))?;
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..].split(' ').next()?.parse().ok()
}

/// Waits for a summary line whose `filtered` and `queued` are as given.
fn wait_for_summary(lab: &Lab, filtered: u64) {
    wait_until(
        &format!("a summary with filtered={filtered} queued=0"),
        Duration::from_secs(20),
        || {
            let log = lab.sender_log();
            last_summary(&log, "filtered") == Some(filtered)
                && last_summary(&log, "queued") == Some(0)
        },
    );
}

/// Writes `rel` under the spool (via a temporary name) and returns its digest.
fn put(lab: &Lab, rel: &str, len: usize, seed: u64) -> (String, String) {
    (rel.to_owned(), make_file(&lab.spool.join(rel), len, seed))
}

/// Sets a file's mtime.
fn set_mtime(path: &Path, at: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(at))
        .expect("set mtime");
}

fn names(map: &BTreeMap<String, String>) -> Vec<&str> {
    map.keys().map(String::as_str).collect()
}

#[test]
fn what_lands_is_exactly_what_the_filter_admits_and_the_rest_stays_counted() {
    let mut lab = Lab::new("loopback");
    lab.sender_extra = format!(
        "summary_interval = \"1s\"\nlog_level = \"debug\"\n{}",
        lab.sender_extra
    );
    lab.sender_pipe_extra = "processors = [{ type = \"filter\", include = [\"**/*.csv\"], exclude = [\"tmp/**\"], start_time = \"2026-01-01T00:00:00Z\" }]\n".into();
    let admitted: BTreeMap<String, String> = [
        put(&lab, "a.csv", 3000, 1),
        put(&lab, "plant/2026/b.csv", 70_000, 2),
    ]
    .into();
    let refused: BTreeMap<String, String> = [
        put(&lab, "tmp/c.csv", 500, 3),
        put(&lab, "d.txt", 800, 4),
        put(&lab, "old.csv", 900, 5),
    ]
    .into();
    let before_start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_735_000_000); // 2024-12
    set_mtime(&lab.spool.join("old.csv"), before_start);
    lab.start_receiver();
    lab.start_sender();
    lab.wait_for_tree(&admitted, Duration::from_secs(30));
    wait_for_summary(&lab, 3);
    // Several scans later (poll_interval 200 ms): nothing more landed, each refused file was
    // judged once (one DEBUG line each), and they are all still in the spool.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(tree(&lab.dest), admitted, "{}", lab.diagnostics());
    assert_eq!(
        tree(&lab.spool),
        refused,
        "the refused files stay in the spool"
    );
    let log = lab.sender_log();
    for (rel, why) in [
        ("tmp/c.csv", "excluded"),
        ("d.txt", "not_included"),
        ("old.csv", "before_start"),
    ] {
        let lines = count_lines(
            &log,
            &["object left in the source", &format!("path={rel} "), why],
        );
        assert_eq!(lines, 1, "{rel}: one DEBUG line saying {why}\n{log}");
    }
    // A refused file that changes is judged again: old.csv rewritten now is after start_time.
    let mut expected = admitted.clone();
    let (rel, digest) = put(&lab, "old.csv", 1000, 6);
    expected.insert(rel, digest);
    lab.wait_for_tree(&expected, Duration::from_secs(30));
    wait_for_summary(&lab, 2);
    assert_eq!(names(&tree(&lab.spool)), ["d.txt", "tmp/c.csv"]);
}

#[test]
fn history_false_keeps_the_files_present_at_creation_even_after_a_restart() {
    let mut lab = Lab::new("loopback");
    lab.sender_extra = format!("summary_interval = \"1s\"\n{}", lab.sender_extra);
    lab.sender_pipe_extra = "history = false\n".into();
    let old: BTreeMap<String, String> = [
        put(&lab, "old-1.bin", 4000, 1),
        put(&lab, "sub/old-2.bin", 9000, 2),
    ]
    .into();
    lab.start_receiver();
    lab.start_sender();
    let log_has = |lab: &Lab, s: &str| lab.sender_log().contains(s);
    wait_until("the pipe's creation line", Duration::from_secs(20), || {
        log_has(&lab, "pipe created")
    });
    let mut landed: BTreeMap<String, String> = [put(&lab, "new-1.bin", 5000, 3)].into();
    lab.wait_for_tree(&landed, Duration::from_secs(30));
    wait_for_summary(&lab, 2);
    // A restart is not a creation: the old files stay; a file arriving now goes.
    lab.sender.take().expect("sender").term();
    lab.start_sender();
    let (rel, digest) = put(&lab, "new-2.bin", 6000, 4);
    landed.insert(rel, digest);
    lab.wait_for_tree(&landed, Duration::from_secs(30));
    wait_for_summary(&lab, 2);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(tree(&lab.dest), landed, "{}", lab.diagnostics());
    assert_eq!(tree(&lab.spool), old, "the files present at creation stay");
    assert_eq!(
        count_lines(&lab.sender_log(), &["pipe created"]),
        1,
        "created once"
    );
}

#[test]
fn realtime_false_sends_only_the_files_present_at_creation() {
    let mut lab = Lab::new("loopback");
    lab.sender_extra = format!("summary_interval = \"1s\"\n{}", lab.sender_extra);
    lab.sender_pipe_extra = "realtime = false\n".into();
    let present: BTreeMap<String, String> = [
        put(&lab, "p-1.bin", 4000, 1),
        put(&lab, "dir/p-2.bin", 70_000, 2),
    ]
    .into();
    lab.start_receiver();
    lab.start_sender();
    lab.wait_for_tree(&present, Duration::from_secs(30));
    let later: BTreeMap<String, String> = [
        put(&lab, "later-1.bin", 3000, 3),
        put(&lab, "dir/later-2.bin", 3000, 4),
    ]
    .into();
    wait_for_summary(&lab, 2);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(tree(&lab.dest), present, "{}", lab.diagnostics());
    assert_eq!(tree(&lab.spool), later, "the later files stay");
}

/// CSV-like text: compresses well, as operators' exports do.
fn csv(n: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 64);
    let mut i = seed * 1_000_003;
    while out.len() < n {
        let line = format!(
            "2026-01-01T{:02}:{:02}:{:02}Z,pump-{},{}.{},{}\n",
            i / 3600 % 24,
            i / 60 % 60,
            i % 60,
            i % 17,
            i * 7 % 1000,
            i % 10,
            if i % 3 == 0 { "OK" } else { "WARN" }
        );
        out.extend_from_slice(line.as_bytes());
        i += 1;
    }
    out.truncate(n);
    out
}

/// Writes text files into the spool; returns their digests and total size.
fn put_text(lab: &Lab, files: &[(&str, usize)]) -> (BTreeMap<String, String>, u64) {
    let mut out = BTreeMap::new();
    for (i, (rel, len)) in files.iter().enumerate() {
        let data = csv(*len, i as u64 + 1);
        let path = lab.spool.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let tmp = lab.path(&format!("text-{i}.tmp"));
        std::fs::write(&tmp, &data).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
        out.insert((*rel).to_owned(), blake3::hash(&data).to_hex().to_string());
    }
    (out, files.iter().map(|f| f.1 as u64).sum())
}

#[test]
fn compressed_text_lands_byte_identical_with_far_fewer_bytes_through_the_gate_across_a_cut() {
    let mut lab = Lab::new("loopback");
    lab.sender_pipe_extra =
        "processors = [{ type = \"compress\", codec = \"zstd\", level = 3 }]\n".into();
    let files = [
        ("a.csv", 9_000_000),
        ("b/b.csv", 6_000_000),
        ("c.csv", 40_000),
    ];
    let (expected, raw) = put_text(&lab, &files);
    lab.start_receiver();
    // The gate cuts the first connection early: most bytes go on the reconnected one, so they
    // are only few if the new connection compresses too.
    lab.start_sim(&["--cut-after-bytes".to_owned(), "200000".to_owned()]);
    lab.start_sender();
    lab.wait_for_tree(&expected, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    let stats = lab.sim_stats();
    let wire = stats.get("forward_bytes").copied().unwrap_or(u64::MAX);
    assert_eq!(stats.get("cuts"), Some(&1), "{stats:?}");
    assert!(
        stats.get("connections").copied().unwrap_or(0) >= 2,
        "{stats:?}"
    );
    assert!(
        wire * 4 < raw,
        "{wire} bytes through the gate for {raw} bytes of text: not compressed\n{}",
        lab.diagnostics()
    );
    eprintln!("compress: {raw} bytes of text, {wire} bytes through the gate");
}

#[test]
fn check_config_refuses_compress_on_a_udp_pipe_naming_the_pipe() {
    let mut lab = Lab::new("udp-loopback");
    lab.receiver_addr = Some("127.0.0.1:9".parse().expect("addr"));
    lab.sender_pipe_extra = "processors = [{ type = \"compress\" }]\n".into();
    let (ok, out) = check_config(&gapsync_tests::bin("gapsync-sender"), &lab.sender_config());
    assert!(!ok, "{out}");
    assert!(
        out.contains("pipe scada: processors: `compress` is not available on a udp (diode) pipe"),
        "{out}"
    );
}

const MB: u64 = 1_000_000;
/// Bytes not limited (the Hello, heartbeats), with room to spare.
const SLACK: u64 = 64 * 1024;

/// A lab whose pipe has `rate_limit` at `rate` with `burst`, a file of `size` bytes in the
/// spool, receiver and simulator started; returns it and what must land.
fn rate_lab(profile: &str, rate: u64, burst: u64, size: u64) -> (Lab, BTreeMap<String, String>) {
    let mut lab = Lab::new(profile);
    lab.sender_pipe_extra = format!(
        "processors = [{{ type = \"rate_limit\", bytes_per_second = {rate}, burst_bytes = {burst} }}]\n"
    );
    let expected: BTreeMap<String, String> = [put(&lab, "big.bin", size as usize, 7)].into();
    lab.start_receiver();
    lab.start_sim(&[]);
    (lab, expected)
}

/// Starts the sender and samples `bytes(stats)` every 50 ms until `expected` has landed; the
/// last sample is at landing, with at least `size` bytes (all of them went through by then,
/// whether or not the simulator said so yet). Times count from just before the sender started.
fn sample_until_landed(
    lab: &mut Lab,
    expected: &BTreeMap<String, String>,
    size: u64,
    bytes: impl Fn(&std::collections::HashMap<String, u64>) -> u64,
) -> Vec<(Duration, u64)> {
    let t0 = Instant::now();
    lab.start_sender();
    let mut samples = Vec::new();
    while &tree(&lab.dest) != expected {
        let at = t0.elapsed();
        assert!(at < Duration::from_secs(60), "{}", lab.diagnostics());
        samples.push((at, bytes(&lab.sim_stats())));
        std::thread::sleep(Duration::from_millis(50));
    }
    let seen = samples.last().map_or(0, |s| s.1);
    samples.push((t0.elapsed(), seen.max(size)));
    samples
}

/// From the start the bucket was full (one burst), then the rate: no sample above that.
fn assert_within_from_start(samples: &[(Duration, u64)], rate: u64, burst: u64) {
    for (at, bytes) in samples {
        let allowed = burst + (rate as f64 * at.as_secs_f64()) as u64 + SLACK;
        assert!(
            *bytes <= allowed,
            "{bytes} bytes through the gate {at:?} after start, allowed {allowed}"
        );
    }
}

#[test]
fn a_rate_limited_pipe_never_passes_the_limit_plus_one_burst() {
    let (rate, burst, size) = (5 * MB, MB, 20 * MB);
    let (mut lab, expected) = rate_lab("loopback", rate, burst, size);
    let samples = sample_until_landed(&mut lab, &expected, size, |st| {
        st.get("forward_bytes").copied().unwrap_or(0)
    });
    assert_within_from_start(&samples, rate, burst);
    // Over every window of at least a second: at most the rate, one burst, one frame paid for
    // before the window opened, and the simulator's 100 ms reporting lag at each end.
    let (frame, lag) = (4 * 1024 * 1024, 0.3);
    for (i, (a, fa)) in samples.iter().enumerate() {
        for (b, fb) in samples[i..]
            .iter()
            .filter(|(b, _)| *b - *a >= Duration::from_secs(1))
        {
            let span = (*b - *a).as_secs_f64() + lag;
            let allowed = burst + frame + (rate as f64 * span) as u64 + SLACK;
            let n = fb - fa;
            assert!(
                n <= allowed,
                "{n} bytes between {a:?} and {b:?}, allowed {allowed}"
            );
        }
    }
    report_rate(&samples, rate, burst);
}

/// Prints the steady rate (from the first bytes seen at the gate to the first sample with all
/// of them: the first frame, paid for before it went out, is left out) and the whole run's.
fn report_rate(samples: &[(Duration, u64)], rate: u64, burst: u64) {
    let first = samples
        .iter()
        .copied()
        .find(|s| s.1 > SLACK)
        .unwrap_or_default();
    let (landed_at, top) = samples.last().copied().unwrap_or_default();
    let last = samples
        .iter()
        .copied()
        .find(|s| s.1 == top)
        .unwrap_or_default();
    let steady = (last.1 - first.1) as f64 / (last.0 - first.0).as_secs_f64().max(1e-3);
    eprintln!(
        "rate_limit: 20 MB at {} MB/s (burst {} MB): steady {:.2} MB/s at the gate; landed {:.2} s after the sender started ({:.2} MB/s overall)",
        rate / MB,
        burst / MB,
        steady / 1e6,
        landed_at.as_secs_f64(),
        20.0 / landed_at.as_secs_f64()
    );
}

#[test]
fn the_rate_limit_holds_on_the_diode_link_too() {
    let (rate, burst, size) = (2 * MB, MB / 2, 6 * MB);
    let (mut lab, expected) = rate_lab("udp-loopback", rate, burst, size);
    // At least the symbol's 1400 bytes per datagram (headers and the tag come on top).
    let samples = sample_until_landed(&mut lab, &expected, size, |st| {
        st.get("forwarded").copied().unwrap_or(0) * 1400
    });
    assert_within_from_start(&samples, rate, burst);
}
