//! The command line as CONTRACT.md gives it: a bad flag or value exits 64 with one line on
//! stderr that names it; --help and --version exit 0.

use std::process::Command;

fn agent(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weft-agent"))
        .args(args)
        .env_remove("WEFT_NATS_URL")
        .env_remove("WEFT_POD_ID")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn bad_flags_exit_64_with_one_line_naming_them() {
    let base = ["--nats-url", "nats://192.0.2.1:4222", "--pod-id", "web-1"];
    /// Extra flags, environment, and the flag the error must name.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (&["--status-interval", "soon"], &[], "--status-interval"),
        (&["--wireguard", "maybe"], &[], "--wireguard"),
        (&["--spec-source", "file"], &[], "--spec-source"),
        (&["--status-encoding", "xml"], &[], "--status-encoding"),
        (&["--no-such-flag"], &[], "--no-such-flag"),
        (
            &[],
            &[("WEFT_STATUS_INTERVAL", "later")],
            "--status-interval",
        ),
    ];
    for (extra, env, names) in cases {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let (code, _, err) = agent(&args, env);
        assert_eq!(code, 64, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err:?}");
        assert!(err.contains(names), "{args:?}: {err:?}");
    }
    let (code, _, err) = agent(&["--pod-id", "web-1"], &[]);
    assert_eq!((code, err.contains("--nats-url")), (64, true), "{err}");
    let (code, _, err) = agent(
        &["--nats-url", "nats://192.0.2.1:4222", "--pod-id", "a.b"],
        &[],
    );
    assert_eq!((code, err.contains("--pod-id")), (64, true), "{err}");
}

#[test]
fn bad_host_flags_exit_64_with_one_line_naming_them() {
    let base = [
        "host",
        "--nats-url",
        "nats://192.0.2.1:4222",
        "--host-id",
        "host-a",
    ];
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (&["--host-range", "10.11.0.0/20"], &[], "--host-range"),
        (&["--veth-range", "10.12.0.0/18"], &[], "--veth-range"),
        (&[], &[("WEFT_HOST_RANGE", "10.11.0.0/24")], "--host-range"),
        (&["--netns-prefix", "../x"], &[], "--netns-prefix"),
        (&["--veth-range", "10.11.0.0/16"], &[], "--veth-range"),
        (&["--status-interval", "soon"], &[], "--status-interval"),
        (&["--wireguard", "kernel"], &[], "--wireguard"),
    ];
    for (extra, env, names) in cases {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let (code, _, err) = agent(&args, env);
        assert_eq!(code, 64, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err:?}");
        assert!(err.contains(names), "{args:?}: {err:?}");
    }
    let (code, _, err) = agent(&["host", "--nats-url", "nats://192.0.2.1:4222"], &[]);
    assert_eq!((code, err.contains("--host-id")), (64, true), "{err}");
    let (code, out, _) = agent(&["host", "--help"], &[]);
    assert_eq!(code, 0);
    assert!(
        out.contains("--host-range") && out.contains("--trust-keys"),
        "{out}"
    );
}

#[test]
fn help_and_version_exit_0() {
    let (code, out, _) = agent(&["--help"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("--status-interval"));
    let (code, out, _) = agent(&["--version"], &[]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("weft-agent {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn env_vars_stand_in_for_flags() {
    // Everything from the environment, but a bad pod id: proves the variables are read.
    let (code, _, err) = agent(
        &[],
        &[
            ("WEFT_NATS_URL", "nats://192.0.2.1:4222"),
            ("WEFT_POD_ID", "bad id"),
        ],
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--pod-id"), "{err}");
}

/// A temporary directory, removed on drop.
struct Dir(std::path::PathBuf);

impl Dir {
    fn new() -> Dir {
        let d = std::env::temp_dir().join(format!("weft-cli-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn file(&self, name: &str, text: &str, mode: u32) -> String {
        use std::os::unix::fs::PermissionsExt;
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p.display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn bad_secret_files_exit_64_with_one_line_naming_the_flag_before_any_socket() {
    let d = Dir::new();
    let open_password = d.file("pw-open", "s3cret\n", 0o644);
    let good_password = d.file("pw", "s3cret\n", 0o600);
    let bad_seed = d.file("seed", "SUnotaseed\n", 0o600);
    let bad_creds = d.file("creds", "just some text\n", 0o600);
    let open_key = d.file("key-open.pem", "-----BEGIN PRIVATE KEY-----\n", 0o644);
    let cert = d.file("cert.pem", "not a certificate\n", 0o644);
    let bad_trust = d.file("trust", "# keys\nnot-a-key\n", 0o644);
    let missing = d.0.join("missing").display().to_string();
    // 192.0.2.1 is TEST-NET-1: if the agent got as far as connecting, it would hang, not exit.
    let base = ["--nats-url", "nats://192.0.2.1:4222", "--pod-id", "web-1"];
    type Case<'a> = (Vec<&'a str>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec!["--nats-user", "u", "--nats-password-file", &open_password],
            "--nats-password-file",
            "mode 0644 lets group or others at it (chmod 600)",
        ),
        (
            vec!["--nats-user", "u", "--nats-password-file", &missing],
            "--nats-password-file",
            "No such file",
        ),
        (
            vec!["--nats-token-file", &open_password],
            "--nats-token-file",
            "mode 0644",
        ),
        (
            vec!["--nats-nkey", &bad_seed],
            "--nats-nkey",
            "not a user nkey seed",
        ),
        (
            vec!["--nats-creds", &bad_creds],
            "--nats-creds",
            "not a NATS credentials file",
        ),
        (vec!["--nats-user", "u"], "--nats-password-file", ""),
        (
            vec!["--nats-password-file", &good_password],
            "--nats-user",
            "",
        ),
        (vec!["--nats-tls-cert", &cert], "--nats-tls-key", ""),
        (
            vec!["--nats-tls-ca", &cert],
            "--nats-tls-ca",
            "no usable CA certificate",
        ),
        (
            vec!["--nats-tls-cert", &cert, "--nats-tls-key", &open_key],
            "--nats-tls-",
            "",
        ),
        (
            vec![
                "--nats-nkey",
                &bad_seed,
                "--nats-token-file",
                &good_password,
            ],
            "--nats-token-file",
            "",
        ),
        (
            vec!["--trust-keys", &bad_trust],
            "--trust-keys",
            "line 2: \"not-a-key\" is not a key",
        ),
        (
            vec!["--nats-url", "nats://a:b:c"],
            "--nats-url",
            "is not a NATS URL",
        ),
    ];
    for (extra, flag, says) in cases {
        let mut args = base.to_vec();
        args.extend_from_slice(&extra);
        let (code, _, err) = agent(&args, &[]);
        assert_eq!(code, 64, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err:?}");
        assert!(
            err.contains(flag) && err.contains(says),
            "{args:?}: {err:?}"
        );
        assert!(!err.contains("s3cret"), "a secret in an error: {err}");
    }
    // The same from the environment.
    let (code, _, err) = agent(
        &base,
        &[
            ("WEFT_NATS_USER", "u"),
            ("WEFT_NATS_PASSWORD_FILE", &open_password),
        ],
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--nats-password-file"), "{err}");
}
