//! The shipped nats-server configuration is what the generator writes.

use std::path::PathBuf;

use weft_testkit::natsconf::shipped_file;

#[test]
fn the_shipped_configuration_is_the_generators() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../agent/deploy/nats-server.conf");
    let want = shipped_file();
    if std::env::var_os("WEFT_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (WEFT_BLESS=1 writes it)", path.display()));
    assert_eq!(
        have, want,
        "agent/deploy/nats-server.conf is not what natsconf::shipped_file() writes \
         (WEFT_BLESS=1 cargo test -p weft-testkit --test natsconf rewrites it)"
    );
}
