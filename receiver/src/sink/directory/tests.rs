//! Unit tests of the directory sink.

use super::writer::{BOUNCE_BYTES, DIRECT_ALIGN, DIRECT_MIN};
use super::*;

/// The done log kept in the staging folder itself (where versions before pipes kept it).
fn done_in(staging: &Path) -> DoneLog {
    fs::create_dir_all(staging).expect("staging");
    DoneLog::open(&staging.join("done.log"), Duration::from_secs(3600)).expect("done log")
}

fn sink(root: &Path) -> DirectorySink {
    DirectorySink::open(
        &root.join("dest"),
        &root.join("staging"),
        done_in(&root.join("staging")),
        Duration::from_secs(3600),
    )
    .expect("open sink")
}

fn commit_for(data: &[u8]) -> Commit {
    Commit {
        size: data.len() as u64,
        digest: *blake3::hash(data).as_bytes(),
    }
}

#[test]
fn a_file_lands_only_at_commit_and_a_second_commit_writes_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut s = sink(dir.path());
    let open = OpenFile {
        path: "a/b.txt".into(),
        size: 6,
        mtime_ns: 0,
    };
    s.open(1, &open).expect("open");
    s.write(1, 0, b"abc").expect("write");
    s.write(1, 3, b"def").expect("write");
    s.write(1, 3, b"def").expect("rewrite is harmless");
    let target = dir.path().join("dest/a/b.txt");
    assert!(!target.exists(), "not visible before commit");
    assert_eq!(
        s.commit(1, &commit_for(b"abcdef")).expect("commit"),
        Applied::Done
    );
    assert!(!target.exists(), "not visible before the flush");
    assert_eq!(s.flush().into_result().expect("flush").len(), 1);
    assert_eq!(fs::read(&target).expect("landed"), b"abcdef");
    fs::remove_file(&target).expect("consumer took it");
    assert_eq!(s.open(1, &open).expect("reopen"), Applied::AlreadyCommitted);
    assert_eq!(
        s.commit(1, &commit_for(b"abcdef")).expect("again"),
        Applied::AlreadyCommitted
    );
    assert!(s.flush().into_result().expect("flush").is_empty());
    assert!(
        !target.exists(),
        "a committed transfer is never written again"
    );
}

#[test]
fn whole_aligned_blocks_written_directly_and_out_of_order_land_intact() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut s = sink(dir.path());
    let block = 2 * DIRECT_MIN;
    let data: Vec<u8> = (0..2 * block + 1000).map(|i| (i * 7 % 251) as u8).collect();
    let open = OpenFile {
        path: "big.bin".into(),
        size: data.len() as u64,
        mtime_ns: 0,
    };
    s.open(9, &open).expect("open");
    // Page-aligned copies of the blocks, as the diode receiver hands them over.
    let mut buf = vec![0u8; block + DIRECT_ALIGN];
    let at = (DIRECT_ALIGN - buf.as_ptr().addr() % DIRECT_ALIGN) % DIRECT_ALIGN;
    for b in [1, 0] {
        buf[at..at + block].copy_from_slice(&data[b * block..(b + 1) * block]);
        s.write(9, (b * block) as u64, &buf[at..at + block])
            .expect("direct write");
    }
    s.write(9, 2 * block as u64, &data[2 * block..])
        .expect("the unaligned tail goes through the page cache");
    // Out of order: the digest is read back from the file at commit.
    assert_lands(&mut s, dir.path(), 9, "big.bin", &data);
}

/// Commits transfer `id`, flushes, and checks that `name` landed holding `data`.
fn assert_lands(s: &mut DirectorySink, root: &Path, id: u64, name: &str, data: &[u8]) {
    assert_eq!(
        s.commit(id, &commit_for(data)).expect("commit"),
        Applied::Done
    );
    assert_eq!(s.flush().into_result().expect("flush").len(), 1);
    assert_eq!(
        fs::read(root.join("dest").join(name)).expect("landed"),
        data
    );
}

#[test]
fn unaligned_records_land_intact_through_the_bounce_buffer() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut s = sink(dir.path());
    // Records of odd sizes at odd offsets, starting one byte into their buffer, as Data
    // records sit inside a received frame; one is larger than the bounce buffer.
    let sizes = [
        DIRECT_MIN + 1,
        3,
        BOUNCE_BYTES + 5 * DIRECT_ALIGN + 17,
        DIRECT_MIN * 3 - 9,
    ];
    let total: usize = sizes.iter().sum();
    let frame: Vec<u8> = (0..=total).map(|i| (i * 13 % 241) as u8).collect();
    let data = &frame[1..];
    let open = OpenFile {
        path: "odd.bin".into(),
        size: total as u64,
        mtime_ns: 0,
    };
    s.open(4, &open).expect("open");
    let mut at = 0;
    for n in sizes {
        s.write(4, at as u64, &data[at..at + n]).expect("write");
        at += n;
    }
    assert_lands(&mut s, dir.path(), 4, "odd.bin", data);
}

#[test]
fn a_digest_mismatch_discards_the_partial() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut s = sink(dir.path());
    s.open(
        2,
        &OpenFile {
            path: "x".into(),
            size: 3,
            mtime_ns: 0,
        },
    )
    .expect("open");
    s.write(2, 0, b"abc").expect("write");
    assert!(matches!(
        s.commit(2, &commit_for(b"abd")),
        Err(SinkError::DigestMismatch { .. })
    ));
    assert!(!dir.path().join("dest/x").exists());
    assert_eq!(
        fs::read_dir(dir.path().join("staging"))
            .expect("ls")
            .count(),
        2,
        "only done.log and opens.log are left"
    );
}

#[test]
fn a_partial_resumes_across_a_restart_and_an_interrupted_commit_is_finished() {
    let dir = tempfile::tempdir().expect("tmp");
    let open = OpenFile {
        path: "r.bin".into(),
        size: 4,
        mtime_ns: 0,
    };
    {
        let mut s = sink(dir.path());
        s.open(3, &open).expect("open");
        s.write(3, 0, b"ab").expect("write");
    }
    let mut s = sink(dir.path());
    s.open(3, &open).expect("reopen keeps the partial");
    s.write(3, 2, b"cd").expect("resume at 2");
    s.commit(3, &commit_for(b"abcd")).expect("commit");
    assert_eq!(s.flush().into_result().expect("flush").len(), 1);
    assert_eq!(
        fs::read(dir.path().join("dest/r.bin")).expect("landed"),
        b"abcd"
    );

    // Simulate a crash after the done record and before the rename.
    s.open(
        4,
        &OpenFile {
            path: "late.bin".into(),
            size: 1,
            mtime_ns: 0,
        },
    )
    .expect("open");
    s.write(4, 0, b"z").expect("write");
    s.done.record_all(&[4]).expect("record");
    drop(s);
    let mut s = sink(dir.path());
    let late = dir.path().join("dest/late.bin");
    assert!(!late.exists(), "not landed before the repair");
    assert!(s.is_unlanded(4));
    // Recorded as done, so its data is not written again, but its commit is not answered
    // before the file is visible: the repeated commit lands it.
    let again = OpenFile {
        path: "late.bin".into(),
        size: 1,
        mtime_ns: 0,
    };
    assert_eq!(
        s.open(4, &again).expect("reopen"),
        Applied::AlreadyCommitted
    );
    assert_eq!(
        s.commit(4, &commit_for(b"z")).expect("commit"),
        Applied::Done
    );
    let landed = s.flush().into_result().expect("flush");
    assert_eq!(landed.len(), 1);
    assert_eq!(landed[0].path, "late.bin");
    assert_eq!(
        landed[0].digest_hex,
        blake3::hash(b"z").to_hex().to_string()
    );
    assert_eq!(fs::read(&late).expect("recovered"), b"z");
    assert!(!s.is_unlanded(4));
    assert_eq!(
        s.commit(4, &commit_for(b"z")).expect("again"),
        Applied::AlreadyCommitted
    );
}

#[test]
fn a_group_lands_together_and_an_abandoned_group_lands_nothing_until_repeated() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut s = sink(dir.path());
    let put = |s: &mut DirectorySink, id: u64, name: &str| {
        let data = name.as_bytes();
        let open = OpenFile {
            path: format!("g{}/{name}", id % 3),
            size: data.len() as u64,
            mtime_ns: 0,
        };
        s.open(id, &open).expect("open");
        s.write(id, 0, data).expect("write");
        s.commit(id, &commit_for(data)).expect("commit")
    };
    for id in 10..15 {
        assert_eq!(put(&mut s, id, &format!("f{id}")), Applied::Done);
    }
    s.abandon();
    assert!(s.flush().into_result().expect("nothing staged").is_empty());
    let visible = (0..3)
        .filter_map(|g| fs::read_dir(dir.path().join(format!("dest/g{g}"))).ok())
        .map(|d| d.count())
        .sum::<usize>();
    assert_eq!(visible, 0, "nothing of an abandoned group is visible");
    // The sender repeats the group (same ids): the staged partials are reopened.
    for id in 10..15 {
        assert_eq!(put(&mut s, id, &format!("f{id}")), Applied::Done);
    }
    assert_eq!(
        put(&mut s, 10, "f10"),
        Applied::AlreadyCommitted,
        "a commit repeated in one group"
    );
    let landed = s.flush().into_result().expect("flush");
    assert_eq!(landed.len(), 5);
    for id in 10..15 {
        let p = dir.path().join(format!("dest/g{}/f{id}", id % 3));
        assert_eq!(fs::read(&p).expect("landed"), format!("f{id}").as_bytes());
    }
    drop(s);
    let s = sink(dir.path());
    assert!(
        (10..15).all(|id| s.done.contains(id)),
        "the group is in the done log"
    );
}

#[test]
fn abandoned_partials_are_removed_and_recent_ones_kept() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut s = sink(dir.path());
    s.open(
        5,
        &OpenFile {
            path: "old".into(),
            size: 2,
            mtime_ns: 0,
        },
    )
    .expect("open");
    s.write(5, 0, b"a").expect("write");
    assert_eq!(
        s.housekeeping(Duration::from_secs(3600)).expect("scan"),
        0,
        "recent partial kept"
    );
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(s.housekeeping(Duration::from_millis(10)).expect("scan"), 1);
    assert_eq!(s.partials(), 0);
    assert!(
        matches!(s.write(5, 1, b"b"), Err(SinkError::NotOpen(5))),
        "a sender coming back reopens it"
    );
    assert_eq!(
        fs::read_dir(dir.path().join("staging"))
            .expect("ls")
            .count(),
        2,
        "only done.log and opens.log are left"
    );
}

#[test]
fn names_that_escape_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut s = sink(dir.path());
    std::os::unix::fs::symlink("/tmp", dir.path().join("dest/link")).expect("symlink");
    for name in ["../evil", "/etc/x", "link/evil"] {
        let r = s.open(
            9,
            &OpenFile {
                path: name.into(),
                size: 1,
                mtime_ns: 0,
            },
        );
        assert!(
            matches!(r, Err(SinkError::BadName { .. } | SinkError::Escape(_))),
            "{name}: {r:?}"
        );
    }
    let r = s.write(9, 0, b"x");
    assert!(matches!(r, Err(SinkError::NotOpen(9))));
    s.open(
        10,
        &OpenFile {
            path: "o".into(),
            size: 1,
            mtime_ns: 0,
        },
    )
    .expect("open");
    assert!(matches!(
        s.write(10, 1, b"x"),
        Err(SinkError::OutOfRange { .. })
    ));
}

#[test]
fn a_folder_swapped_for_a_symlink_or_a_name_taken_by_a_folder_before_the_rename_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).expect("mkdir");
    let mut s = sink(dir.path());
    for (id, name) in [(1, "sub/a.txt"), (2, "b.txt"), (3, "sub2/deep/c.txt")] {
        let open = OpenFile {
            path: name.into(),
            size: 2,
            mtime_ns: 0,
        };
        assert_eq!(s.open(id, &open).expect("open"), Applied::Done);
        s.write(id, 0, b"hi").expect("write");
    }
    // After the Opens checked them: a folder becomes a symlink out, a name becomes a folder.
    let dest = dir.path().join("dest");
    fs::remove_dir(dest.join("sub")).expect("rmdir");
    std::os::unix::fs::symlink(&outside, dest.join("sub")).expect("symlink");
    fs::create_dir(dest.join("b.txt")).expect("mkdir");
    for id in [1, 2] {
        s.commit(id, &commit_for(b"hi")).expect("commit");
        let r = s.flush().result;
        assert!(matches!(r, Err(SinkError::Escape(_))), "{id}: {r:?}");
        s.abandon();
    }
    assert_eq!(
        fs::read_dir(&outside).expect("ls").count(),
        0,
        "nothing written outside"
    );
    assert!(dest.join("b.txt").is_dir());
    // A deeper name in a fresh folder still lands.
    s.commit(3, &commit_for(b"hi")).expect("commit");
    assert_eq!(s.flush().into_result().expect("flush").len(), 1);
    assert_eq!(fs::read(dest.join("sub2/deep/c.txt")).expect("read"), b"hi");
    // The two refused ones are committed (their partials carry the source's 1970 mtime):
    // housekeeping keeps them, and once the names are free a restart lands them.
    assert_eq!(
        s.housekeeping(Duration::from_secs(60))
            .expect("housekeeping"),
        0
    );
    drop(s);
    fs::remove_file(dest.join("sub")).expect("rm symlink");
    fs::remove_dir(dest.join("b.txt")).expect("rmdir");
    let mut s = sink(dir.path());
    assert_eq!(s.unlanded(), 2, "recorded as done, not yet visible");
    let landed = s.retry_landing().into_result().expect("retry");
    assert_eq!(landed.len(), 2);
    assert_eq!(fs::read(dest.join("sub/a.txt")).expect("read"), b"hi");
    assert_eq!(fs::read(dest.join("b.txt")).expect("read"), b"hi");
    assert_eq!(fs::read_dir(&outside).expect("ls").count(), 0);
}

/// Writes `data` as transfer `id` named `name` and commits it.
fn stage(s: &mut DirectorySink, id: u64, name: &str, data: &[u8]) {
    let open = OpenFile {
        path: name.into(),
        size: data.len() as u64,
        mtime_ns: 0,
    };
    assert_eq!(s.open(id, &open).expect("open"), Applied::Done);
    s.write(id, 0, data).expect("write");
    assert_eq!(
        s.commit(id, &commit_for(data)).expect("commit"),
        Applied::Done
    );
}

#[test]
fn a_landing_that_fails_is_never_answered_ok_and_lands_with_its_delivery_when_it_can() {
    let dir = tempfile::tempdir().expect("tmp");
    let dest = dir.path().join("dest");
    let mut s = sink(dir.path());
    stage(&mut s, 1, "ok.bin", b"fine");
    stage(&mut s, 2, "blocked/x.bin", b"late");
    // Between the Open's check and the rename, a regular file takes the folder's name.
    fs::remove_dir(dest.join("blocked")).expect("rmdir");
    fs::write(dest.join("blocked"), b"in the way").expect("block");
    let r = s.flush();
    assert_eq!(
        r.delivered.len(),
        1,
        "the file before the failure is delivered"
    );
    assert_eq!(r.delivered[0].path, "ok.bin");
    assert!(r.result.is_err(), "the frame is not answered OK");
    assert!(s.is_unlanded(2));
    // Every repeat of its commit tries again, and is refused while the cause lasts.
    s.open(
        2,
        &OpenFile {
            path: "blocked/x.bin".into(),
            size: 4,
            mtime_ns: 0,
        },
    )
    .expect("reopen");
    s.commit(2, &commit_for(b"late")).expect("commit again");
    let r = s.flush();
    assert!(r.result.is_err() && r.delivered.is_empty(), "{r:?}");
    s.abandon();
    assert_eq!(s.retry_landing().delivered.len(), 0);
    // The cause fixed, a restart in between: the repair lands it, with its delivery.
    fs::remove_file(dest.join("blocked")).expect("unblock");
    drop(s);
    let mut s = sink(dir.path());
    assert_eq!(s.unlanded(), 1);
    let r = s.retry_landing().into_result().expect("retry");
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].digest_hex, blake3::hash(b"late").to_hex().to_string());
    assert_eq!(
        fs::read(dest.join("blocked/x.bin")).expect("landed"),
        b"late"
    );
    assert_eq!(s.unlanded(), 0);
    s.commit(2, &commit_for(b"late")).expect("commit");
    assert!(
        s.flush().into_result().expect("flush").is_empty(),
        "landed once"
    );
}

#[test]
fn names_inside_the_staging_folder_are_refused_and_the_default_staging_works() {
    let dir = tempfile::tempdir().expect("tmp");
    let dest = dir.path().join("dest");
    let mut s = DirectorySink::open(
        &dest,
        &dest.join(STAGING_DIR),
        done_in(&dest.join(STAGING_DIR)),
        Duration::from_secs(3600),
    )
    .expect("open sink");
    for name in [
        ".gapsync-staging",
        ".gapsync-staging/done.log",
        ".gapsync-staging/x/y",
    ] {
        let open = OpenFile {
            path: name.into(),
            size: 1,
            mtime_ns: 0,
        };
        assert!(
            matches!(s.open(9, &open), Err(SinkError::Reserved(_))),
            "{name}"
        );
    }
    stage(&mut s, 1, ".gapsync-stagingx/a.bin", b"a");
    stage(&mut s, 2, "b.bin", b"b");
    assert_eq!(s.flush().into_result().expect("flush").len(), 2);
    assert_eq!(
        fs::read(dest.join(".gapsync-stagingx/a.bin")).expect("a"),
        b"a"
    );
    assert_eq!(fs::read(dest.join("b.bin")).expect("b"), b"b");
    let names: Vec<String> = fs::read_dir(&dest)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".gapsync-probe"))
        .collect();
    assert!(names.is_empty(), "the start's probe is removed: {names:?}");
}

#[test]
fn the_staging_folder_of_an_earlier_version_is_adopted_with_its_records() {
    let dir = tempfile::tempdir().expect("tmp");
    let legacy = dir.path().join("state/receiver/plant-a/scada/staging");
    let dest = dir.path().join("dest");
    {
        let mut old =
            DirectorySink::open(&dest, &legacy, done_in(&legacy), Duration::from_secs(3600))
                .expect("old sink");
        stage(&mut old, 1, "done.bin", b"done");
        assert_eq!(old.flush().into_result().expect("flush").len(), 1);
        // A partial in progress, and one recorded as done but not landed.
        let open = OpenFile {
            path: "half.bin".into(),
            size: 4,
            mtime_ns: 0,
        };
        old.open(2, &open).expect("open");
        old.write(2, 0, b"ha").expect("write");
        stage(&mut old, 3, "unlanded.bin", b"late");
        old.commit_group().expect("commit group");
        fs::remove_file(dest.join("done.bin")).expect("consumer took it");
    }
    let staging = default_staging(&dest, "plant-a", "scada");
    // The done log, the journal and the done-but-unlanded partial; the partial in progress
    // is resent from the start.
    assert_eq!(adopt_legacy_staging(&legacy, &staging).expect("adopt"), 3);
    assert!(!legacy.exists(), "the old folder is gone");
    let mut s = DirectorySink::open(
        &dest,
        &staging,
        done_in(&staging),
        Duration::from_secs(3600),
    )
    .expect("new sink");
    let done = OpenFile {
        path: "done.bin".into(),
        size: 4,
        mtime_ns: 0,
    };
    assert_eq!(s.open(1, &done).expect("open"), Applied::AlreadyCommitted);
    assert_eq!(s.retry_landing().into_result().expect("retry").len(), 1);
    assert_eq!(
        fs::read(dest.join("unlanded.bin")).expect("landed"),
        b"late"
    );
    let half = OpenFile {
        path: "half.bin".into(),
        size: 4,
        mtime_ns: 0,
    };
    s.open(2, &half).expect("reopen");
    s.write(2, 0, b"half").expect("resent from the start");
    s.commit(2, &commit_for(b"half")).expect("commit");
    assert_eq!(s.flush().into_result().expect("flush").len(), 1);
    assert!(!dest.join("done.bin").exists(), "never delivered twice");
}

#[test]
fn staged_data_that_vanished_before_landing_is_not_delivered_but_sent_again() {
    let dir = tempfile::tempdir().expect("tmp");
    let dest = dir.path().join("dest");
    let mut s = sink(dir.path());
    stage(&mut s, 5, "gone/x.bin", b"lost");
    fs::remove_dir(dest.join("gone")).expect("rmdir");
    fs::write(dest.join("gone"), b"in the way").expect("block");
    assert!(s.flush().result.is_err());
    assert!(s.is_unlanded(5));
    // Someone removes the staged partial, and the name is free again.
    fs::remove_file(
        dir.path()
            .join("staging")
            .join(crate::sink::land::part_name(5)),
    )
    .expect("remove the partial");
    fs::remove_file(dest.join("gone")).expect("unblock");
    let r = s.retry_landing();
    assert!(
        matches!(r.result, Err(SinkError::DigestMismatch { .. })),
        "{r:?}"
    );
    assert!(r.delivered.is_empty(), "never reported as delivered");
    assert!(!s.is_unlanded(5));
    let open = OpenFile {
        path: "gone/x.bin".into(),
        size: 4,
        mtime_ns: 0,
    };
    assert_eq!(
        s.open(5, &open).expect("open"),
        Applied::Done,
        "no longer recorded as done: the sender's resend is taken"
    );
    s.write(5, 0, b"lost").expect("write");
    s.commit(5, &commit_for(b"lost")).expect("commit");
    assert_eq!(s.flush().into_result().expect("flush").len(), 1);
    assert_eq!(fs::read(dest.join("gone/x.bin")).expect("landed"), b"lost");
}

#[test]
fn the_staging_folder_is_writable_by_this_user_only_and_keeps_the_setgid_bit() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tmp");
    let dest = dir.path().join("dest");
    fs::create_dir(&dest).expect("dest");
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o2777)).expect("chmod");
    let staging = default_staging(&dest, "plant-a", "scada");
    fs::create_dir_all(&staging).expect("staging");
    fs::set_permissions(&staging, fs::Permissions::from_mode(0o2777)).expect("chmod");
    let _s = DirectorySink::open(
        &dest,
        &staging,
        done_in(&staging),
        Duration::from_secs(3600),
    )
    .expect("open sink");
    for d in [
        staging.clone(),
        dest.join(STAGING_DIR).join("plant-a"),
        dest.join(STAGING_DIR),
    ] {
        let mode = fs::metadata(&d).expect("meta").permissions().mode() & 0o7777;
        assert_eq!(mode & 0o777, 0o750, "{}: {mode:o}", d.display());
    }
    let mode = fs::metadata(&staging).expect("meta").permissions().mode();
    assert_ne!(
        mode & 0o2000,
        0,
        "setgid kept: landed files get dest's group"
    );
}

#[test]
fn a_landed_file_carries_its_origin_chain_as_an_extended_attribute() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut s = sink(dir.path());
    let open = OpenFile {
        path: "c/x.csv".into(),
        size: 3,
        mtime_ns: 0,
    };
    let chain = OriginChain::parse("plant-a/p1,plant-b/p2").expect("chain");
    s.open_with_origin(7, &open, &chain, &Default::default())
        .expect("open");
    s.write(7, 0, b"xyz").expect("write");
    s.commit(7, &commit_for(b"xyz")).expect("commit");
    assert_eq!(s.flush().into_result().expect("flush").len(), 1);
    let landed = File::open(dir.path().join("dest/c/x.csv")).expect("landed");
    assert_eq!(
        gapsync_daemon::origin::read(&landed).expect("xattr"),
        chain,
        "the chain is on the landed file (set on the staged one before the rename)"
    );
}

#[test]
fn a_link_object_lands_as_a_symlink_and_is_never_followed_afterwards() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tmp");
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).expect("outside");
    let mut s = sink(dir.path());
    let link = ObjectAttrs {
        mode: None,
        link: Some("../data/x.txt".into()),
    };
    let open = |path: &str, size| OpenFile {
        path: path.into(),
        size,
        mtime_ns: 0,
    };
    s.open_with_origin(1, &open("sub/l", 0), &OriginChain::default(), &link)
        .expect("open link");
    s.commit(1, &commit_for(b"")).expect("commit link");
    // A FAIL later in the frame: the staged link is dropped at the resent Open (never
    // opened through) and made again at the repeated commit.
    s.abandon();
    s.open_with_origin(1, &open("sub/l", 0), &OriginChain::default(), &link)
        .expect("open link again");
    s.commit(1, &commit_for(b"")).expect("commit link again");
    assert_eq!(s.flush().into_result().expect("flush").len(), 1);
    let landed = dir.path().join("dest/sub/l");
    assert_eq!(
        fs::read_link(&landed).expect("a symlink"),
        Path::new("../data/x.txt")
    );
    // A link over a folder is refused, never replaces it.
    fs::create_dir_all(dir.path().join("dest/d")).expect("folder");
    let r = s.open_with_origin(2, &open("d", 0), &OriginChain::default(), &link);
    assert!(matches!(r, Err(SinkError::Escape(_))), "{r:?}");
    // A landed link to a folder outside (made by hand here) is never written through.
    std::os::unix::fs::symlink(&outside, dir.path().join("dest/esc")).expect("link");
    let r = s.open(3, &open("esc/x", 1));
    assert!(matches!(r, Err(SinkError::Escape(_))), "{r:?}");
    assert!(
        fs::read_dir(&outside).expect("ls").next().is_none(),
        "nothing written outside"
    );
    // Modes: masked with 0o777 and the umask; never set-uid.
    let exec = ObjectAttrs {
        mode: Some(0o4755),
        link: None,
    };
    s.open_with_origin(4, &open("run.sh", 2), &OriginChain::default(), &exec)
        .expect("open");
    s.write(4, 0, b"hi").expect("write");
    s.commit(4, &commit_for(b"hi")).expect("commit");
    s.flush().into_result().expect("flush");
    let mode = fs::metadata(dir.path().join("dest/run.sh"))
        .expect("landed")
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755 & !attrs::umask());
}
