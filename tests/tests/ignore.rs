//! A pipe's `ignore` rule, as an operator sees it: what the config says is what lands, and every
//! file left behind is counted in the summary and named in an INFO line.

use std::collections::BTreeMap;
use std::time::Duration;

use gapsync_tests::{Lab, bin, check_config, count_lines, make_file, tree, wait_until};

/// A small tree as a user would move it in: dotfiles, a dot-folder, temporary names, a folder
/// named `build`, normal files. Returns each file's digest and size.
fn fill_spool(lab: &Lab) -> BTreeMap<String, (String, u64)> {
    let files: [(&str, u64); 10] = [
        ("README", 1200),
        ("src/main.c", 30_000),
        ("src/deep/util.h", 700),
        (".gitignore", 40),
        ("src/.clang-format", 90),
        (".git/config", 300),
        (".git/objects/ab/cdef", 5000),
        ("report.tmp", 2048),
        ("src/dl.iso.part", 4096),
        ("build/out.o", 1000),
    ];
    files
        .iter()
        .enumerate()
        .map(|(i, (rel, len))| {
            let digest = make_file(&lab.spool.join(rel), *len as usize, 100 + i as u64);
            ((*rel).to_owned(), (digest, *len))
        })
        .collect()
}

/// The value of `key` in the last `summary` line of `log`.
fn last_summary(log: &str, key: &str) -> Option<u64> {
    let line = log.lines().rev().find(|l| l.contains(" summary"))?;
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..].split(' ').next()?.parse().ok()
}

/// Runs `lab` on `files` until what should land has landed and the summary counts the rest;
/// checks the ignored files stayed in the spool and were each named once.
fn run_and_check(mut lab: Lab, files: &BTreeMap<String, (String, u64)>, ignored: &[&str]) {
    lab.sender_extra = format!("summary_interval = \"1s\"\n{}", lab.sender_extra);
    let expected: BTreeMap<String, String> = files
        .iter()
        .filter(|(rel, _)| !ignored.contains(&rel.as_str()))
        .map(|(rel, (digest, _))| (rel.clone(), digest.clone()))
        .collect();
    let ignored_bytes: u64 = ignored.iter().map(|rel| files[*rel].1).sum();
    lab.start_receiver();
    lab.start_sender();
    lab.wait_for_tree(&expected, Duration::from_secs(30));
    wait_until(
        "a summary counting the ignored files",
        Duration::from_secs(20),
        || {
            let log = lab.sender_log();
            last_summary(&log, "ignored_files") == Some(ignored.len() as u64)
                && last_summary(&log, "ignored_bytes") == Some(ignored_bytes)
                && last_summary(&log, "queued") == Some(0)
        },
    );
    // Nothing more arrives later: the ignored files stay where they are, counted.
    std::thread::sleep(Duration::from_millis(1500));
    let landed: BTreeMap<String, String> = tree(&lab.dest);
    assert_eq!(landed, expected, "{}", lab.diagnostics());
    let left = tree(&lab.spool);
    let mut left_names: Vec<&str> = left.keys().map(String::as_str).collect();
    left_names.sort_unstable();
    let mut want_left = ignored.to_vec();
    want_left.sort_unstable();
    assert_eq!(
        left_names, want_left,
        "only the ignored files stay in the spool"
    );
    let log = lab.sender_log();
    for rel in ignored {
        assert_eq!(
            count_lines(&log, &["file ignored", &format!("path={rel} ")]),
            1,
            "{rel} is named once\n{log}"
        );
    }
    assert_eq!(count_lines(&log, &["file ignored"]), ignored.len(), "{log}");
}

#[test]
fn by_default_dot_names_tmp_and_part_stay_in_the_spool_counted_and_named() {
    let lab = Lab::new("loopback");
    let files = fill_spool(&lab);
    let ignored = [
        ".gitignore",
        "src/.clang-format",
        ".git/config",
        ".git/objects/ab/cdef",
        "report.tmp",
        "src/dl.iso.part",
    ];
    run_and_check(lab, &files, &ignored);
}

#[test]
fn a_custom_ignore_list_lets_dotfiles_cross_and_skips_what_it_names() {
    let mut lab = Lab::new("loopback");
    lab.sender_pipe_extra = "ignore = [\"*.tmp\", \"build\"]\n".into();
    let files = fill_spool(&lab);
    run_and_check(lab, &files, &["report.tmp", "build/out.o"]);
    // An empty list: everything crosses.
    let mut lab = Lab::new("loopback");
    lab.sender_pipe_extra = "ignore = []\n".into();
    let files = fill_spool(&lab);
    run_and_check(lab, &files, &[]);
}

#[test]
fn bad_ignore_globs_are_check_config_errors_naming_the_pipe_and_each_glob() {
    let mut lab = Lab::new("loopback");
    lab.receiver_addr = Some("127.0.0.1:9".parse().expect("addr"));
    lab.sender_pipe_extra = "ignore = [\"*.tmp\", \"[unclosed\", \"logs/*.log\"]\n".into();
    let (ok, out) = check_config(&bin("gapsync-sender"), &lab.sender_config());
    assert!(!ok, "{out}");
    for glob in ["[unclosed", "logs/*.log"] {
        assert_eq!(
            count_lines(&out, &["(scada)", "`ignore`", &format!("{glob:?}")]),
            1,
            "{out}"
        );
    }
    assert!(!out.contains("\"*.tmp\""), "{out}");
}
