//! The example configs in examples/ pass check-config on both daemons, next to the key file
//! they name, and are refused without it.

use std::path::Path;
use std::process::Command;

use gapsync_tests::bin;

use gapsync_tests::check_config as check;

#[test]
fn every_example_config_passes_check_config_beside_its_key() {
    for (side, name) in [
        ("sender", "sender"),
        ("receiver", "receiver"),
        ("sender", "sender-diode"),
        ("receiver", "receiver-diode"),
    ] {
        let exe = bin(&format!("gapsync-{side}"));
        let example =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../examples/{name}.toml"));
        // The example names keys/scada-1.key next to itself: run it beside a freshly made key,
        // its profile in hardware-profiles/ beside it, and its folders moved into the test's
        // folder (the spool and landing folders made, as an operator must).
        let dir = gapsync_tests::open_tempdir();
        let d = dir.path().display().to_string();
        let config = dir.path().join(format!("{name}.toml"));
        let mut moved = std::fs::read_to_string(&example).expect("read example");
        for (from, to) in [
            ("/srv/gapsync/outbox/scada", "spool"),
            ("/srv/gapsync/inbox/scada", "dest"),
            ("/var/lib/gapsync", "state"),
            ("/var/log/gapsync", "logs"),
        ] {
            moved = moved.replace(from, &format!("{d}/{to}"));
        }
        let unmoved = moved
            .lines()
            .map(|l| l.split('#').next().unwrap_or_default())
            .find(|l| l.contains("\"/srv/") || l.contains("\"/var/"));
        assert!(
            unmoved.is_none(),
            "{name} names a folder this test does not move: {unmoved:?}"
        );
        std::fs::create_dir(dir.path().join("spool")).expect("mkdir spool");
        std::fs::create_dir(dir.path().join("dest")).expect("mkdir dest");
        std::fs::write(&config, moved).expect("write config");
        std::fs::create_dir(dir.path().join("keys")).expect("mkdir");
        let keygen = Command::new(&exe)
            .arg("keygen")
            .arg("--out")
            .arg(dir.path().join("keys/scada-1.key"))
            .output()
            .expect("keygen");
        assert!(
            keygen.status.success(),
            "{side}: {}",
            String::from_utf8_lossy(&keygen.stderr)
        );
        let (ok, out) = check(&exe, &config);
        assert!(ok, "{side}: {out}");
        let (ok, out) = check(&exe, &example);
        assert!(
            !ok && out.contains("scada-1.key"),
            "{side}: without its key file the example is refused: {out}"
        );
    }
}

#[test]
fn every_shipped_profile_passes_check_config_on_both_daemons() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = gapsync_tests::make_certs(dir.path(), "ci");
    let d = dir.path().display().to_string();
    std::fs::create_dir(dir.path().join("spool")).expect("mkdir");
    std::fs::create_dir(dir.path().join("dest")).expect("mkdir");
    let mut checked = 0;
    for entry in std::fs::read_dir(gapsync_tests::profiles_dir()).expect("profiles") {
        let p = entry.expect("entry").path();
        if p.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let profile = format!("{:?}", p.display().to_string());
        let tls = if std::fs::read_to_string(&p)
            .expect("read")
            .contains("link = \"tls\"")
        {
            format!(
                "[tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n",
                certs.server_cert.display().to_string(),
                certs.server_key.display().to_string(),
                certs.ca.display().to_string()
            )
        } else {
            String::new()
        };
        let sender = dir.path().join("s.toml");
        std::fs::write(&sender, format!("node = \"n\"\nprofile = {profile}\nstate_dir = \"{d}/state\"\n{tls}[[pipe]]\nname = \"p\"\nspool = \"{d}/spool\"\ngate = \"127.0.0.1:1\"\n")).expect("write");
        let receiver = dir.path().join("r.toml");
        std::fs::write(&receiver, format!("node = \"o\"\nprofile = {profile}\nlisten = \"127.0.0.1:0\"\nallow = [\"127.0.0.1\"]\nstate_dir = \"{d}/state\"\n{tls}[[pipe]]\nname = \"p\"\nfrom = \"n\"\ndest = \"{d}/dest\"\n")).expect("write");
        for (side, config) in [("sender", &sender), ("receiver", &receiver)] {
            let (ok, out) = check(&bin(&format!("gapsync-{side}")), config);
            assert!(ok, "{} on the {side}: {out}", p.display());
        }
        checked += 1;
    }
    assert!(checked >= 5, "{checked} profiles checked");
}
