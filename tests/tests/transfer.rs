//! 1,000 files of mixed sizes, nested folders and non-ASCII names cross the gate simulator and
//! arrive exactly once, byte-identical.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use gapsync_tests::{Lab, count_files, count_lines, make_file, profile, wait_until};

/// Writes `n` files into `spool`: the edge sizes around one frame's payload, a 50 MiB file, and
/// small-to-medium files in nested folders with non-ASCII names. Returns path -> digest.
fn mixed_set(spool: &Path, chunk: usize, n: usize) -> BTreeMap<String, String> {
    let edge = [0, 1, chunk - 1, chunk, chunk + 1, 50 << 20];
    let names = [
        "变电站-{}.dat",
        "Überwachung-{}.csv",
        "données {}.bin",
        "plain-{}.log",
        "遥测_{}.txt",
    ];
    let mut out = BTreeMap::new();
    for i in 0..n {
        let size = match edge.get(i) {
            Some(&s) => s,
            None if i % 50 == 0 => 256 * 1024 + i * 997,
            None => (i * 7919) % 20_000,
        };
        let name = names[i % names.len()].replace("{}", &i.to_string());
        let rel = match i % 4 {
            0 => name,
            1 => format!("d{}/{name}", i % 10),
            2 => format!("d{}/sub-{}/{name}", i % 10, i % 3),
            _ => format!("区域-{}/d{}/deep/{name}", i % 2, i % 5),
        };
        let digest = make_file(&spool.join(&rel), size, i as u64 + 1);
        out.insert(rel, digest);
    }
    out
}

fn thousand_files_through_the_gate(profile_name: &str) {
    let mut lab = Lab::new(profile_name);
    let chunk = profile(profile_name).chunk_size();
    let expected = mixed_set(&lab.spool, chunk, 1000);
    lab.start_receiver();
    lab.start_sim(&[]);
    lab.start_sender();
    lab.wait_for_tree(&expected, Duration::from_secs(600));
    wait_until(
        "the spool to be emptied after the commits",
        Duration::from_secs(60),
        || count_files(&lab.spool) == 0,
    );
    let rlog = lab.receiver_log();
    assert_eq!(
        count_lines(&rlog, &[" delivered "]),
        1000,
        "each file delivered exactly once\n{}",
        lab.diagnostics()
    );
    assert_eq!(count_lines(&lab.sender_log(), &[" sent "]), 1000);
    let stats = lab.sim_stats();
    assert_eq!(
        stats.get("violations"),
        Some(&0),
        "the reverse direction carried only one 0x00/0xFF byte per frame"
    );
    // Small files share frames (batches), so there are far fewer frames than files; every
    // frame got exactly one reply.
    let frames = stats.get("frames").copied().unwrap_or(0);
    assert!(
        frames > 0 && frames < 1000,
        "small files were batched: {stats:?}"
    );
    assert_eq!(stats.get("reverse_bytes"), Some(&frames), "{stats:?}");
    assert!(
        !rlog.contains("ERROR"),
        "no errors on a clean link\n{}",
        lab.diagnostics()
    );
}

#[test]
fn thousand_mixed_files_arrive_once_with_the_syskeeper_profile() {
    thousand_files_through_the_gate("syskeeper-2000");
}

#[test]
fn thousand_mixed_files_arrive_once_with_the_pipelined_loopback_profile() {
    assert!(profile("loopback").window.get() > 1);
    thousand_files_through_the_gate("loopback");
}

#[test]
fn two_senders_at_once_land_in_their_own_folders() {
    let mut lab = Lab::new("loopback");
    let dest_b = lab.path("dest-b");
    std::fs::create_dir_all(&dest_b).expect("dest b");
    lab.receiver_extra = format!(
        "[[pipe]]\nname = \"scada\"\nfrom = \"plant-b\"\ndest = {:?}\n",
        dest_b.display().to_string()
    );
    let spool_b = lab.path("spool-b");
    let mut a = BTreeMap::new();
    let mut b = BTreeMap::new();
    for i in 0..50 {
        let rel = format!("same/name-{i}.bin");
        a.insert(
            rel.clone(),
            make_file(&lab.spool.join(&rel), 20_000 + i, i as u64),
        );
        b.insert(
            rel.clone(),
            make_file(&spool_b.join(&rel), 30_000 + i, 1000 + i as u64),
        );
    }
    a.insert(
        "big-a.bin".into(),
        make_file(&lab.spool.join("big-a.bin"), 30 << 20, 77),
    );
    b.insert(
        "big-b.bin".into(),
        make_file(&spool_b.join("big-b.bin"), 30 << 20, 78),
    );
    lab.start_receiver();
    lab.start_sender();
    // A second sender with its own node name, state and spool, on the same pipe name.
    let cfg_b = lab.path("sender-b.toml");
    let text = std::fs::read_to_string(lab.sender_config())
        .expect("config a")
        .replace("node = \"plant-a\"", "node = \"plant-b\"")
        .replace(
            &lab.spool.display().to_string(),
            &spool_b.display().to_string(),
        )
        .replace(
            &lab.path("sstate").display().to_string(),
            &lab.path("sstate-b").display().to_string(),
        )
        .replace(
            &lab.path("slogs").display().to_string(),
            &lab.path("slogs-b").display().to_string(),
        );
    std::fs::write(&cfg_b, text).expect("config b");
    let exe = gapsync_tests::bin("gapsync-sender");
    let _sender_b = gapsync_tests::Proc::spawn(
        "sender-b",
        &exe,
        &["run".into(), "--config".into(), cfg_b.display().to_string()],
        lab.root.path(),
    );
    lab.wait_for_tree(&a, Duration::from_secs(120));
    wait_until("plant-b's files", Duration::from_secs(120), || {
        gapsync_tests::tree(&dest_b) == b
    });
    let rlog = lab.receiver_log();
    assert!(rlog.contains("node=plant-a") && rlog.contains("node=plant-b"));
    assert_eq!(count_lines(&rlog, &[" delivered "]), a.len() + b.len());
}

#[test]
fn small_frames_carry_large_files_and_a_name_too_long_for_a_frame_is_quarantined() {
    // 2 KiB frames (the smallest profiles allow 1 KiB): a 300 KB file takes ~150 frames, and
    // an Open whose name alone exceeds a frame can never be sent.
    let mut lab = Lab::new("loopback");
    lab.receiver_extra = "[profile_overrides]\nmax_frame_bytes = 2048\n".into();
    lab.sender_extra = "[profile_overrides]\nmax_frame_bytes = 2048\nreconnect_backoff_min = \"50ms\"\nreconnect_backoff_max = \"500ms\"\n".into();
    let quarantine = lab.path("quarantine");
    lab.sender_pipe_extra = format!("quarantine_dir = {:?}\n", quarantine.display().to_string());
    let mut expected = BTreeMap::new();
    expected.insert(
        "big.bin".to_owned(),
        make_file(&lab.spool.join("big.bin"), 300_000, 1),
    );
    for i in 0..5 {
        let rel = format!("small-{i}.txt");
        expected.insert(
            rel.clone(),
            make_file(&lab.spool.join(&rel), 100 * i, 2 + i as u64),
        );
    }
    let long: String = (0..11)
        .map(|_| "d".repeat(200))
        .collect::<Vec<_>>()
        .join("/")
        + "/f.bin";
    make_file(&lab.spool.join(&long), 10, 9);
    lab.start_receiver();
    lab.start_sender();
    lab.wait_for_tree(&expected, Duration::from_secs(120));
    wait_until(
        "the long name to be quarantined",
        Duration::from_secs(30),
        || quarantine.join(&long).is_file(),
    );
    assert!(
        lab.sender_log()
            .contains("does not fit in a frame of this profile"),
        "{}",
        lab.diagnostics()
    );
}
