//! The diode link (`link = "udp"`): files cross the gate simulator's UDP mode with nothing
//! coming back, through random loss, bursts, reordering, duplication and corruption; loss
//! beyond the repair ratio is reported and nothing partial is visible; a second pass
//! completes what the first could not; a restarted receiver goes on; a wrong key writes
//! nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use gapsync_tests::{Lab, bin, count_files, count_lines, make_file, wait_until};

const LOOPBACK: &str = "udp-loopback";
/// The receiver's line for a landed file.
const RECEIVED: &str = "worker: delivered ";

/// The simulator's counters once it has written them after the last datagram.
fn sim_stats(lab: &Lab) -> std::collections::HashMap<String, u64> {
    let mut last = lab.sim_stats();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = lab.sim_stats();
        if now == last && !now.is_empty() {
            return now;
        }
        last = now;
    }
}

/// `n` files of mixed sizes (an empty one, a few multi-block ones, many small ones).
fn files(spool: &Path, n: usize, seed: u64) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for i in 0..n {
        let size = match i {
            0 => 0,
            1 => 1,
            2 => 1400,
            3 => 3 << 20,
            4 => 1024 * 1400 + 7,
            _ => (i * 7919) % 60_000,
        };
        let rel = format!("d{}/f-{i}.bin", i % 3);
        out.insert(
            rel.clone(),
            make_file(&spool.join(&rel), size, seed + i as u64),
        );
    }
    out
}

fn run_through_sim(profile: &str, sim: &[&str], overrides: &str, n: usize) -> Lab {
    let mut lab = Lab::new(profile);
    if !overrides.is_empty() {
        lab.receiver_extra = format!("[profile_overrides]\n{overrides}");
        lab.sender_extra = lab.receiver_extra.clone();
    }
    let expected = files(&lab.spool, n, 7);
    lab.start_receiver();
    lab.start_sim(&sim.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
    lab.start_sender();
    lab.wait_for_tree(&expected, Duration::from_secs(60));
    lab
}

fn assert_clean(lab: &Lab) {
    let log = lab.receiver_log();
    assert_eq!(count_lines(&log, &["ERROR"]), 0, "{}", lab.diagnostics());
    assert!(
        !lab.staging().exists() || staging_parts(lab) == 0,
        "partials left behind"
    );
}

fn staging_parts(lab: &Lab) -> usize {
    walk(&lab.staging())
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "part"))
        .count()
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn a_clean_link_delivers_every_file_once_and_the_sender_keeps_what_it_sent() {
    let lab = run_through_sim(LOOPBACK, &[], "", 40);
    assert_clean(&lab);
    let slog = lab.sender_log();
    assert_eq!(count_lines(&slog, &["sent (every pass"]), 40, "{slog}");
    // Nothing confirms arrival on a diode, so by default a sent file is kept in sent_dir.
    assert_eq!(count_files(&lab.path("sstate/sender/scada/sent")), 40);
    assert_eq!(count_files(&lab.spool), 0);
    let stats = sim_stats(&lab);
    assert!(
        stats.get("forwarded").copied().unwrap_or(0) > 2000,
        "{stats:?}"
    );
    assert_eq!(count_lines(&lab.receiver_log(), &[RECEIVED]), 40);
}

/// Files sent with `profile` through the simulator losing `percent` of the datagrams at
/// random all arrive whole, and the simulator did lose more than `min_lost`.
fn random_loss_is_repaired(
    profile: &str,
    percent: &str,
    seed: &str,
    overrides: &str,
    n: usize,
    min_lost: u64,
) {
    let sim = ["--loss-percent", percent, "--seed", seed];
    let lab = run_through_sim(profile, &sim, overrides, n);
    assert_clean(&lab);
    let stats = sim_stats(&lab);
    assert!(stats["lost_random"] > min_lost, "{stats:?}");
}

#[test]
fn one_percent_random_loss_is_repaired() {
    random_loss_is_repaired(LOOPBACK, "1", "11", "", 30, 20);
}

#[test]
fn five_percent_loss_is_repaired_with_the_lossy_profile() {
    random_loss_is_repaired("udp-diode-100m-lossy", "5", "5", "", 12, 100);
}

#[test]
fn the_jumbo_profile_delivers_with_its_9000_byte_datagrams() {
    // 8,952-byte datagrams: a batch of them is larger than one UDP GSO send may carry (64 KiB).
    // Paced down so that the machine running the tests keeps up.
    random_loss_is_repaired(
        "udp-diode-10g-jumbo",
        "1",
        "3",
        "rate_limit_mbit = 1000",
        12,
        5,
    );
}

#[test]
fn bursts_of_fifty_lost_datagrams_are_repaired() {
    let lab = run_through_sim(
        LOOPBACK,
        &["--burst-every", "1000", "--burst-len", "50"],
        "",
        20,
    );
    assert_clean(&lab);
    assert!(
        sim_stats(&lab)["lost_burst"] >= 100,
        "{:?}",
        sim_stats(&lab)
    );
}

#[test]
fn reordered_duplicated_and_corrupted_datagrams_change_nothing() {
    let lab = run_through_sim(
        LOOPBACK,
        &[
            "--reorder-percent",
            "5",
            "--dup-percent",
            "3",
            "--corrupt-percent",
            "0.5",
            "--seed",
            "3",
        ],
        "",
        30,
    );
    // Corrupted datagrams are dropped on their checksum (a WARN), never written.
    assert_eq!(
        count_lines(&lab.receiver_log(), &["ERROR"]),
        0,
        "{}",
        lab.diagnostics()
    );
    let s = sim_stats(&lab);
    assert!(
        s["reordered"] > 0 && s["duplicated"] > 0 && s["corrupted"] > 0,
        "{s:?}"
    );
}

/// One 3 MB file alone in the spool; the simulator drops datagrams 400-1600 of the stream,
/// far more than 10% repair can make up for, all within the file's first pass.
fn excess_loss_lab(passes: u8) -> (Lab, String) {
    let mut lab = Lab::new(LOOPBACK);
    lab.receiver_extra =
        format!("[profile_overrides]\npasses = {passes}\nobject_deadline = \"1s\"\n");
    lab.sender_extra = lab.receiver_extra.clone();
    let digest = make_file(&lab.spool.join("big.bin"), 3 << 20, 99);
    lab.start_receiver();
    lab.start_sim(&["--drop-range".to_owned(), "400-1600".to_owned()]);
    lab.start_sender();
    (lab, digest)
}

#[test]
fn loss_beyond_the_repair_ratio_is_reported_and_nothing_partial_is_visible() {
    let (lab, digest) = excess_loss_lab(1);
    wait_until(
        "the abandoned object's ERROR",
        Duration::from_secs(30),
        || lab.receiver_log().contains("object abandoned"),
    );
    let log = lab.receiver_log();
    let line = log
        .lines()
        .find(|l| l.contains("object abandoned"))
        .unwrap_or_default();
    assert!(
        line.contains("path=big.bin")
            && line.contains("size=3145728")
            && line.contains("loss_percent="),
        "{line}"
    );
    assert_eq!(count_files(&lab.dest), 0, "nothing visible");
    assert_eq!(staging_parts(&lab), 0, "the partial was discarded");
    // Other files go on arriving.
    let mut all = files(&lab.spool, 5, 40);
    lab.wait_for_tree(&all, Duration::from_secs(30));
    wait_until("every file sent", Duration::from_secs(10), || {
        count_lines(&lab.sender_log(), &["sent (every pass"]) == 6
    });
    // The operator resends everything sent so far: the lost file lands, the others, already
    // landed, are recognised by their transfer ids and not landed twice.
    let out = Command::new(bin("gapsync-sender"))
        .args([
            "resend",
            "--pipe",
            "scada",
            "--since",
            "2000-01-01 00:00:00",
            "--config",
        ])
        .arg(lab.path("sender.toml"))
        .output()
        .expect("resend");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("6 file(s) put back"), "{stdout}");
    all.insert("big.bin".to_owned(), digest);
    lab.wait_for_tree(&all, Duration::from_secs(30));
    wait_until("every file sent again", Duration::from_secs(20), || {
        count_lines(&lab.sender_log(), &["sent (every pass"]) == 12
    });
    std::thread::sleep(Duration::from_millis(300));
    let log = lab.receiver_log();
    assert_eq!(
        count_lines(&log, &[RECEIVED]),
        6,
        "each file landed once: {log}"
    );
}

#[test]
fn a_second_pass_completes_what_the_first_could_not() {
    let (lab, digest) = excess_loss_lab(2);
    let expected = BTreeMap::from([("big.bin".to_owned(), digest)]);
    lab.wait_for_tree(&expected, Duration::from_secs(30));
    let log = lab.receiver_log();
    assert_eq!(
        count_lines(&log, &["ERROR", "pass not decodable", "pass=1"]),
        1,
        "{log}"
    );
    assert_eq!(
        count_lines(&log, &[RECEIVED, "path=big.bin", "pass=2"]),
        1,
        "{log}"
    );
    assert_eq!(count_lines(&log, &["object abandoned"]), 0, "{log}");
}

#[test]
fn a_receiver_restarted_mid_object_goes_on_with_later_objects() {
    let mut lab = Lab::new(LOOPBACK);
    // 100 Mbit/s: the 30 MB file takes about 2.5 s, long enough to kill the receiver in it.
    lab.receiver_extra =
        "[profile_overrides]\nrate_limit_mbit = 100\nobject_deadline = \"1s\"\n".into();
    lab.sender_extra = lab.receiver_extra.clone();
    make_file(&lab.spool.join("first.bin"), 30 << 20, 1);
    lab.start_receiver();
    lab.start_sender();
    wait_until(
        "the receiver to see the first object",
        Duration::from_secs(20),
        || lab.staging().exists() && staging_parts(&lab) == 1,
    );
    std::thread::sleep(Duration::from_millis(500));
    if let Some(r) = lab.receiver.as_mut() {
        r.kill9();
    }
    lab.start_receiver();
    let later = files(&lab.spool, 6, 60);
    lab.wait_for_tree(&later, Duration::from_secs(60));
    assert!(
        !lab.dest.join("first.bin").exists(),
        "the cut object is not visible"
    );
    // The sender going quiet raises the silence alarm (3 s in the lab profile).
    if let Some(s) = lab.sender.as_mut() {
        s.kill9();
    }
    wait_until("the silence alarm", Duration::from_secs(15), || {
        lab.receiver_log().contains("no datagram from the sender")
    });
}

#[test]
fn a_wrong_key_writes_nothing() {
    let mut lab = Lab::new(LOOPBACK);
    let (good, bad) = (lab.path("good.key"), lab.path("bad.key"));
    for k in [&good, &bad] {
        let out = Command::new(bin("gapsync-sender"))
            .args(["keygen", "--out"])
            .arg(k)
            .output()
            .expect("keygen");
        assert!(out.status.success());
    }
    lab.receiver_pipe_extra = format!(
        "require_auth = true\nkeys = [{{ id = 1, file = {:?} }}]\n",
        good.display().to_string()
    );
    lab.sender_pipe_extra = format!("key_file = {:?}\n", bad.display().to_string());
    files(&lab.spool, 5, 1);
    lab.start_receiver();
    lab.start_sender();
    wait_until(
        "the sender to send everything",
        Duration::from_secs(20),
        || count_lines(&lab.sender_log(), &["sent (every pass"]) == 5,
    );
    wait_until("the receiver's ERROR", Duration::from_secs(10), || {
        lab.receiver_log().contains("authentication failed")
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(count_files(&lab.dest), 0);
    assert_eq!(staging_parts(&lab), 0);
}

#[test]
fn the_right_key_delivers_encrypted() {
    let mut lab = Lab::new(LOOPBACK);
    let key = lab.path("k.key");
    let out = Command::new(bin("gapsync-sender"))
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .expect("keygen");
    assert!(out.status.success());
    lab.receiver_pipe_extra = format!(
        "require_auth = true\nkeys = [{{ id = 1, file = {:?} }}]\n",
        key.display().to_string()
    );
    lab.sender_pipe_extra = format!("key_file = {:?}\n", key.display().to_string());
    let expected = files(&lab.spool, 10, 3);
    lab.start_receiver();
    lab.start_sender();
    lab.wait_for_tree(&expected, Duration::from_secs(30));
    assert_clean(&lab);
}

#[test]
fn a_name_too_long_for_one_datagram_is_quarantined_and_the_rest_goes_on() {
    let mut lab = Lab::new(LOOPBACK);
    let long: String = (0..8)
        .map(|i| format!("{i}{}", "x".repeat(200)))
        .collect::<Vec<_>>()
        .join("/");
    make_file(&lab.spool.join(&long).join("f.bin"), 10, 1);
    let expected = files(&lab.spool, 4, 9);
    lab.start_receiver();
    lab.start_sender();
    lab.wait_for_tree(&expected, Duration::from_secs(30));
    wait_until("the quarantine ERROR", Duration::from_secs(10), || {
        lab.sender_log().contains("does not fit one datagram")
    });
    assert!(
        lab.path("sstate/sender/scada/quarantine")
            .join(&long)
            .join("f.bin")
            .exists()
    );
}
