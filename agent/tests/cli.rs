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
