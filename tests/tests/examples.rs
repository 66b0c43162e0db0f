//! The example configs in examples/ pass check-config on both daemons, next to the key file
//! they name, and are refused without it.

use std::path::Path;
use std::process::Command;

use gapsync_tests::bin;

fn check(exe: &Path, config: &Path) -> (bool, String) {
    let out = Command::new(exe)
        .arg("check-config")
        .arg("--config")
        .arg(config)
        .output()
        .expect("run");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn both_example_configs_pass_check_config_beside_their_key() {
    for side in ["sender", "receiver"] {
        let exe = bin(&format!("gapsync-{side}"));
        let example =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../examples/{side}.toml"));
        // The example names keys/scada-1.key next to itself: run it beside a freshly made key.
        let dir = tempfile::tempdir().expect("tmp");
        let config = dir.path().join(format!("{side}.toml"));
        std::fs::copy(&example, &config).expect("copy");
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
