//! Unit tests of the receiver's config: sinks in both forms, per-pipe profiles, links.

use super::*;

/// Writes `receiver.toml` with the repository's profiles and `pipes` appended; returns the
/// folder (kept alive by the caller) and the load result.
fn load(top: &str, pipes: &str) -> (tempfile::TempDir, anyhow::Result<Config>) {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    for f in ["in-a", "in-b"] {
        std::fs::create_dir_all(d.join(f)).expect("dest");
    }
    let profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hardware-profiles");
    let text = format!(
        "node = \"outside\"\nprofile = \"syskeeper-2000\"\nprofiles_dir = {:?}\nlisten = \"127.0.0.1:0\"\nallow = [\"127.0.0.1\"]\nstate_dir = {:?}\n{top}\n{pipes}",
        profiles.display().to_string(),
        d.join("state").display().to_string(),
    );
    let path = d.join("receiver.toml");
    std::fs::write(&path, text).expect("write");
    let r = Config::load(&path);
    (dir, r)
}

fn problems(r: anyhow::Result<Config>) -> String {
    format!("{:#}", r.expect_err("the config must be refused"))
}

#[test]
fn the_sink_table_and_the_dest_shorthand_give_the_same_sink() {
    let (dir, new) = load(
        "",
        "[[pipe]]\nname = \"a\"\nfrom = \"p\"\nsink = { type = \"directory\", path = \"in-a\" }\n",
    );
    let (_, old) = load(
        "",
        "[[pipe]]\nname = \"a\"\nfrom = \"p\"\ndest = \"in-a\"\n",
    );
    let (new, old) = (new.expect("new form"), old.expect("shorthand"));
    let SinkSettings::Directory(d) = &new.pipes[0].sink else {
        panic!("a directory sink")
    };
    assert_eq!(d.dest, dir.path().join("in-a"));
    assert!(
        d.staging
            .starts_with(dir.path().join("in-a/.gapsync-staging"))
    );
    // Same relative folder, other temporary root: compare what lies below each root.
    let SinkSettings::Directory(o) = &old.pipes[0].sink else {
        panic!("a directory sink")
    };
    assert_eq!(o.dest.file_name(), d.dest.file_name());
    assert_eq!(
        o.staging.strip_prefix(&o.dest).ok(),
        d.staging.strip_prefix(&d.dest).ok()
    );
}

#[test]
fn both_sink_forms_at_once_unknown_sink_keys_and_types_are_all_reported() {
    let (_dir, r) = load(
        "",
        "[[pipe]]\nname = \"a\"\nfrom = \"p\"\ndest = \"in-a\"\nsink = { type = \"directory\", path = \"in-a\" }\n\
         [[pipe]]\nname = \"b\"\nfrom = \"p\"\nsink = { type = \"directory\", path = \"in-b\", stagin = \"x\" }\n\
         [[pipe]]\nname = \"c\"\nfrom = \"p\"\nsink = { type = \"s3\", path = \"in-b\" }\n\
         [[pipe]]\nname = \"d\"\nfrom = \"p\"\n",
    );
    let out = problems(r);
    for needle in [
        "[[pipe]] #1 (a): both `sink` and the shorthand `dest`/`staging` are set",
        "unknown key `sink.stagin` in [[pipe]] #2 (b)",
        "[[pipe]] #3 (c): `sink` unknown variant `s3`",
        "[[pipe]] #4 (d): no sink",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
}

#[test]
fn a_pipes_own_profile_overrides_win_over_the_top_level_ones() {
    let (_dir, r) = load(
        "[profile_overrides]\nwindow = 4\nidle_timeout = \"77s\"\n",
        "[[pipe]]\nname = \"a\"\nfrom = \"p\"\ndest = \"in-a\"\nprofile_overrides = { window = 2 }\n\
         [[pipe]]\nname = \"b\"\nfrom = \"p\"\ndest = \"in-b\"\n",
    );
    let c = r.expect("valid");
    let (a, b) = (&c.pipes[0].profile, &c.pipes[1].profile);
    assert_eq!(a.window.get(), 2, "the pipe's own override");
    assert_eq!(a.idle_timeout, Duration::from_secs(77), "the top-level one");
    assert_eq!(b.window.get(), 4);
    assert_eq!(c.profile.window.get(), 4);
}

#[test]
fn tcp_and_udp_pipes_share_a_receiver_but_tcp_and_tls_pipes_do_not() {
    let (_dir, r) = load(
        "",
        "[[pipe]]\nname = \"a\"\nfrom = \"p\"\ndest = \"in-a\"\n\
         [[pipe]]\nname = \"b\"\nfrom = \"p\"\ndest = \"in-b\"\nprofile = \"udp-loopback\"\n",
    );
    let c = r.expect("tcp and udp pipes at once");
    assert_eq!(
        c.tcp_profile().map(|p| p.name.as_str()),
        Some("syskeeper-2000")
    );
    assert_eq!(
        c.udp_profile().map(|p| p.name.as_str()),
        Some("udp-loopback")
    );
    let (_dir, r) = load(
        "",
        "[[pipe]]\nname = \"a\"\nfrom = \"p\"\ndest = \"in-a\"\n\
         [[pipe]]\nname = \"b\"\nfrom = \"p\"\ndest = \"in-b\"\nprofile = \"tls-edge-cloud\"\n",
    );
    let out = problems(r);
    assert!(
        out.contains(
            "pipe a uses link tcp and pipe b link tls: one TCP listener speaks either tcp or tls"
        ),
        "{out}"
    );
    let (_dir, r) = load(
        "",
        "[[pipe]]\nname = \"a\"\nfrom = \"p\"\ndest = \"in-a\"\n\
         [[pipe]]\nname = \"b\"\nfrom = \"p\"\ndest = \"in-b\"\nprofile = \"loopback\"\n",
    );
    let out = problems(r);
    assert!(out.contains("frame differently"), "{out}");
}

#[test]
fn a_postgres_sink_is_read_and_its_problems_are_all_reported() {
    let (_dir, r) = load(
        "",
        "[[pipe]]\nname = \"db\"\nfrom = \"p\"\n[pipe.sink]\ntype = \"postgres\"\nconnection = \"host=/run/postgresql dbname=mirror\"\nrename = { \"public.events\" = \"plant_a.events\" }\n",
    );
    let c = r.expect("a valid postgres sink");
    let SinkSettings::Postgres(s) = &c.pipes[0].sink else {
        panic!("a postgres sink")
    };
    assert!(s.create_tables, "create_tables defaults to true");
    assert_eq!(c.pipes[0].sink.kind(), "postgres");
    let (_dir, r) = load(
        "",
        "[[pipe]]\nname = \"db\"\nfrom = \"p\"\n[pipe.sink]\ntype = \"postgres\"\nconection = \"x\"\nrename = { \"events\" = \"plant_a.events\" }\n",
    );
    let out = problems(r);
    for needle in [
        "unknown key `sink.conection` in [[pipe]] #1 (db)",
        "[[pipe]] #1 (db): `sink.connection` is missing",
        "`sink.rename` entry \"events\" = \"plant_a.events\": both sides must be schema.table",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
}
