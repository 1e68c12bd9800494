//! Authenticated NATS against a real `nats-server` configured as weft ships it
//! (`agent/deploy/nats-server.conf`, or the same generator's output for other credentials):
//! the agent connects with each auth method, over TLS and mutual TLS; a wrong password, an
//! unknown key and an untrusted server certificate each give one clear log line and, once a
//! connection works, a status that says so; and the server's permissions keep a pod to its
//! own subjects and a dashboard to reading.
//!
//! Each test has its own network namespace with `nats-server` and the agent on loopback;
//! agents get no spec, so the kernel is never touched.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use weft_schema::{Encoding, Overall};
use weft_testkit::agent::AgentProcess;
use weft_testkit::control::{ControlPlane, Dashboard};
use weft_testkit::identity::{write_secret, Auth, Identity};
use weft_testkit::nats::NatsServer;
use weft_testkit::natsconf::{
    control_plane_permissions, dashboard_permissions, operator_mode, pod_inbox, pod_permissions,
    user_nkey, Authorization, Credential, ServerConfig, Tls, User, Value,
};
use weft_testkit::pki::{Ca, CertFiles};
use weft_testkit::{require_root, wait_until, Netns};

fn agent_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_weft-agent"))
}

/// A namespace with a CA, a server certificate, and room for a server and agents.
struct World {
    ns: Netns,
    dir: PathBuf,
    ca: Ca,
    server_cert: CertFiles,
    nats: Option<NatsServer>,
}

impl World {
    fn new(tag: &str) -> World {
        require_root();
        let ns = Netns::new(tag).unwrap();
        let dir = std::env::temp_dir().join(format!("weft-trust-{}", ns.name()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Ca::new(&dir, "ca").unwrap();
        let server_cert = ca.server("server").unwrap();
        World {
            ns,
            dir,
            ca,
            server_cert,
            nats: None,
        }
    }

    fn tls(&self, verify: bool) -> Tls {
        let p = |p: &Path| Value::Literal(p.display().to_string());
        Tls {
            cert: p(&self.server_cert.cert),
            key: p(&self.server_cert.key),
            ca: p(&self.ca.cert),
            verify,
        }
    }

    fn config(&self, authorization: Authorization, verify: bool) -> ServerConfig {
        ServerConfig {
            jetstream: Some(Value::Literal(self.dir.join("js").display().to_string())),
            authorization,
            tls: Some(self.tls(verify)),
            max_payload: None,
        }
    }

    /// Writes `config` and starts (or reloads) the server with it.
    fn serve(&mut self, config: &ServerConfig) {
        let path = self.dir.join("nats-server.conf");
        std::fs::write(&path, config.render()).unwrap();
        match &self.nats {
            Some(n) => n.reload().unwrap(),
            None => {
                self.nats = Some(
                    self.ns
                        .enter(|| NatsServer::start_with_config(&path, Vec::new(), true))
                        .unwrap(),
                )
            }
        }
    }

    fn url(&self) -> String {
        self.nats.as_ref().unwrap().url()
    }

    /// A new nkey identity (TLS with the world's CA): its seed file and public key.
    fn nkey(&self, name: &str) -> (Identity, String) {
        let (seed, public) = user_nkey();
        let file = write_secret(&self.dir.join(format!("{name}.nk")), &seed).unwrap();
        (self.identity(name, Auth::Nkey(file)), public)
    }

    fn identity(&self, name: &str, auth: Auth) -> Identity {
        Identity {
            name: name.into(),
            auth,
            ca: Some(self.ca.cert.clone()),
            client_cert: None,
        }
    }

    /// The real agent of pod `pod` in this namespace, as `identity`.
    fn agent(&self, pod: &str, identity: &Identity) -> AgentProcess {
        let mut args: Vec<String> = [
            "--nats-url",
            &self.url(),
            "--pod-id",
            pod,
            "--status-interval",
            "1s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend([
            "--state-dir".into(),
            self.dir.join(format!("state-{pod}")).display().to_string(),
            "--resolv-conf".into(),
            self.dir.join("resolv.conf").display().to_string(),
        ]);
        args.extend(identity.flags());
        AgentProcess::spawn(
            &self.ns,
            agent_bin(),
            &args,
            self.dir.join(format!("agent-{pod}.log")),
        )
        .unwrap()
    }

    fn block_on<F, Fut, R>(&self, body: F) -> R
    where
        F: FnOnce() -> Fut + Send,
        Fut: std::future::Future<Output = R>,
        R: Send,
    {
        self.ns.enter(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
                .block_on(body())
        })
    }

    /// Waits for a status of `pod` seen by `dashboard`, and a `status.get` answer: the agent
    /// is connected, subscribed and publishing.
    fn sees_agent(&self, pod: &str, dashboard: &Identity) -> weft_schema::PodStatus {
        let url = self.url();
        self.block_on(|| async {
            let dash_conn = dashboard.connect(&url, None).await.unwrap();
            let dash = Dashboard::watch(&dash_conn.client, "weft", pod)
                .await
                .unwrap();
            let status = dash
                .wait_for(Duration::from_secs(15), "a status", Instant::now(), |_| {
                    true
                })
                .await;
            let asker = ControlPlane::from(dash_conn);
            let got = asker.status_get(pod, Encoding::Json).await.unwrap();
            assert_eq!(got.pod_id, pod);
            status
        })
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.nats = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn user(
    role: &str,
    credential: Credential,
    permissions: weft_testkit::natsconf::Permissions,
) -> User {
    User {
        role: role.into(),
        credential,
        permissions,
    }
}

fn nkey_user(role: &str, public: &str, p: weft_testkit::natsconf::Permissions) -> User {
    user(role, Credential::Nkey(Value::Literal(public.into())), p)
}

#[test]
fn the_shipped_configuration_serves_nkeys_over_tls_and_mutual_tls() {
    let w = World::new("tnk");
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/nats-server.conf");
    let (web1, web1_pub) = w.nkey("web-1");
    let (web2, web2_pub) = w.nkey("web-2");
    let (_, host_pub) = w.nkey("host-a");
    let (control, control_pub) = w.nkey("control");
    let (dashboard, dashboard_pub) = w.nkey("dashboard");
    let env: Vec<(String, String)> = [
        ("WEFT_NKEY_WEB_1", web1_pub.clone()),
        ("WEFT_NKEY_WEB_2", web2_pub),
        ("WEFT_NKEY_HOST_A", host_pub),
        ("WEFT_NKEY_CONTROL", control_pub),
        ("WEFT_NKEY_DASHBOARD", dashboard_pub),
        (
            "WEFT_NATS_TLS_CERT",
            w.server_cert.cert.display().to_string(),
        ),
        ("WEFT_NATS_TLS_KEY", w.server_cert.key.display().to_string()),
        ("WEFT_NATS_TLS_CA", w.ca.cert.display().to_string()),
        ("WEFT_NATS_STORE", w.dir.join("js").display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut w = w;
    w.nats = Some(
        w.ns.enter(|| NatsServer::start_with_config(&shipped, env, true))
            .unwrap(),
    );
    let mut agent = w.agent("web-1", &web1);
    let status = w.sees_agent("web-1", &dashboard);
    assert_eq!(status.overall, Overall::Pending, "{status:?}");
    assert!(agent.running());
    let _ = (web2, control);

    // Mutual TLS: the same users, and every client must show a certificate of the CA.
    drop(agent);
    let mut w = World::new("tmtls");
    let (web1, web1_pub) = w.nkey("web-1");
    let (dashboard, dashboard_pub) = w.nkey("dashboard");
    let users = vec![
        nkey_user("pod web-1", &web1_pub, pod_permissions("weft", "web-1")),
        nkey_user("dashboard", &dashboard_pub, dashboard_permissions("weft")),
    ];
    w.serve(&w.config(Authorization::Users(users), true));
    let with_cert = |id: &Identity| Identity {
        client_cert: Some(w.ca.client(&id.name).unwrap()),
        ..id.clone()
    };
    // Without a certificate the server refuses the handshake, and the log says why.
    let mut bare = w.agent("web-1", &web1);
    refused_once(
        &bare,
        "the server asks for a client certificate (mutual TLS)",
    );
    bare.kill9();
    let mut agent = w.agent("web-1", &with_cert(&web1));
    let status = w.sees_agent("web-1", &with_cert(&dashboard));
    assert_eq!(status.pod_id, "web-1");
    assert!(agent.running());
}

#[test]
fn passwords_tokens_and_creds_files_connect() {
    // User and password.
    let mut w = World::new("tpw");
    let pw = |name: &str, secret: &str| {
        let file = write_secret(&w.dir.join(format!("{name}.pw")), &format!("{secret}\n")).unwrap();
        w.identity(
            name,
            Auth::Password {
                user: name.into(),
                file,
            },
        )
    };
    let (web1, dashboard) = (pw("web-1", "pod-secret"), pw("dash", "dash-secret"));
    let password = |user: &str, p: &str| Credential::Password {
        user: user.into(),
        password: Value::Literal(p.into()),
    };
    let users = vec![
        user(
            "pod web-1",
            password("web-1", "pod-secret"),
            pod_permissions("weft", "web-1"),
        ),
        user(
            "dashboard",
            password("dash", "dash-secret"),
            dashboard_permissions("weft"),
        ),
    ];
    w.serve(&w.config(Authorization::Users(users), false));
    let _agent = w.agent("web-1", &web1);
    w.sees_agent("web-1", &dashboard);

    // One token for everyone.
    let mut w = World::new("ttok");
    let file = write_secret(&w.dir.join("token"), "t0ken-for-all\n").unwrap();
    let token = w.identity("token", Auth::Token(file));
    w.serve(&w.config(
        Authorization::Token(Value::Literal("t0ken-for-all".into())),
        false,
    ));
    let _agent = w.agent("web-1", &token);
    w.sees_agent("web-1", &token);

    // Operator mode: a creds file (user JWT and seed) per user.
    let mut w = World::new("tcreds");
    let (authorization, creds) = operator_mode(&[
        ("web-1", pod_permissions("weft", "web-1")),
        ("dashboard", dashboard_permissions("weft")),
    ]);
    let creds_id = |name: &str, text: &str| {
        let file = write_secret(&w.dir.join(format!("{name}.creds")), text).unwrap();
        w.identity(name, Auth::Creds(file))
    };
    let (web1, dashboard) = (
        creds_id("web-1", &creds[0]),
        creds_id("dashboard", &creds[1]),
    );
    let mut config = w.config(authorization, false);
    config.jetstream = None; // the test account has no JetStream limits
    w.serve(&config);
    let _agent = w.agent("web-1", &web1);
    w.sees_agent("web-1", &dashboard);
}

/// Counts the agent's "NATS connection refused" lines.
fn refusals(log: &str) -> usize {
    log.matches("NATS connection refused").count()
}

/// Waits until the agent logged a refusal and kept retrying (several attempts), and checks
/// the log says it once, with `says` in it.
fn refused_once(agent: &AgentProcess, says: &str) -> String {
    let line = wait_until(Duration::from_secs(15), "a refusal in the log", || {
        let log = agent.log();
        log.lines()
            .find(|l| l.contains("NATS connection refused"))
            .map(str::to_owned)
            .ok_or(log)
    });
    // The client retries every few milliseconds at first, then every few seconds.
    std::thread::sleep(Duration::from_secs(3));
    let log = agent.log();
    assert_eq!(
        refusals(&log),
        1,
        "logged once per outage, not per retry:\n{log}"
    );
    assert!(line.contains(says), "{line}");
    println!("agent: {line}");
    line
}

/// After the cause is fixed: the first status of the new connection says what happened,
/// and a later one is clean again.
fn reported_then_clean(w: &World, dashboard: &Identity, says: &str) {
    let url = w.url();
    w.block_on(|| async {
        let conn = dashboard.connect(&url, None).await.unwrap();
        let dash = Dashboard::watch(&conn.client, "weft", "web-1")
            .await
            .unwrap();
        let since = Instant::now();
        let reported = dash
            .wait_for(
                Duration::from_secs(20),
                "a status reporting the refusal",
                since,
                |s| s.last_error.contains("NATS refused"),
            )
            .await;
        assert_eq!(reported.overall, Overall::Degraded);
        assert!(
            reported.last_error.contains(says),
            "{}",
            reported.last_error
        );
        dash.wait_for(Duration::from_secs(5), "a clean status again", since, |s| {
            s.overall == Overall::Pending && s.last_error.is_empty()
        })
        .await;
    });
}

#[test]
fn a_wrong_password_is_logged_once_and_reported_once_connected() {
    let mut w = World::new("twpw");
    let file = write_secret(&w.dir.join("web-1.pw"), "wrong\n").unwrap();
    let web1 = w.identity(
        "web-1",
        Auth::Password {
            user: "web-1".into(),
            file: file.clone(),
        },
    );
    let (dashboard, dashboard_pub) = w.nkey("dashboard");
    let users = vec![
        user(
            "pod web-1",
            Credential::Password {
                user: "web-1".into(),
                password: Value::Literal("right".into()),
            },
            pod_permissions("weft", "web-1"),
        ),
        nkey_user("dashboard", &dashboard_pub, dashboard_permissions("weft")),
    ];
    w.serve(&w.config(Authorization::Users(users), false));
    let agent = w.agent("web-1", &web1);
    let line = refused_once(&agent, "authorization violation");
    assert!(
        !line.contains("wrong"),
        "the password in a log line: {line}"
    );
    // Fixed in the file: the next attempt reads it again.
    write_secret(&file, "right\n").unwrap();
    reported_then_clean(&w, &dashboard, "authorization violation");
}

#[test]
fn an_unknown_key_is_logged_once_and_reported_once_connected() {
    let mut w = World::new("tkey");
    let (web1, web1_pub) = w.nkey("web-1");
    let (_, other_pub) = w.nkey("other");
    let (dashboard, dashboard_pub) = w.nkey("dashboard");
    let config = |pod_key: &str| {
        w.config(
            Authorization::Users(vec![
                nkey_user("pod web-1", pod_key, pod_permissions("weft", "web-1")),
                nkey_user("dashboard", &dashboard_pub, dashboard_permissions("weft")),
            ]),
            false,
        )
    };
    let (first, fixed) = (config(&other_pub), config(&web1_pub));
    w.serve(&first);
    let agent = w.agent("web-1", &web1);
    refused_once(&agent, "authorization violation");
    // The server learns the key.
    w.serve(&fixed);
    reported_then_clean(&w, &dashboard, "authorization violation");
}

#[test]
fn an_untrusted_server_certificate_is_logged_once_and_reported_once_connected() {
    let mut w = World::new("tcert");
    let (web1, web1_pub) = w.nkey("web-1");
    let (dashboard, dashboard_pub) = w.nkey("dashboard");
    // The server's certificate comes from another CA than the one the agent trusts.
    let rogue = Ca::new(&w.dir.join("rogue"), "rogue").unwrap();
    let rogue_cert = rogue.server("server").unwrap();
    let users = Authorization::Users(vec![
        nkey_user("pod web-1", &web1_pub, pod_permissions("weft", "web-1")),
        nkey_user("dashboard", &dashboard_pub, dashboard_permissions("weft")),
    ]);
    let mut config = w.config(users, false);
    let p = |p: &Path| Value::Literal(p.display().to_string());
    let good_tls = config.tls.clone();
    config.tls = Some(Tls {
        cert: p(&rogue_cert.cert),
        key: p(&rogue_cert.key),
        ca: p(&rogue.cert),
        verify: false,
    });
    w.serve(&config);
    let agent = w.agent("web-1", &web1);
    let line = refused_once(&agent, "the server's certificate is not trusted");
    assert!(line.contains("UnknownIssuer"), "{line}");
    // The server gets a certificate of the agent's CA.
    config.tls = good_tls;
    w.serve(&config);
    reported_then_clean(&w, &dashboard, "certificate is not trusted");
}

#[test]
fn the_server_keeps_each_pod_to_its_own_subjects_and_the_dashboard_to_reading() {
    let mut w = World::new("tperm");
    let (web1, web1_pub) = w.nkey("web-1");
    let (web2, web2_pub) = w.nkey("web-2");
    let (control, control_pub) = w.nkey("control");
    let (dashboard, dashboard_pub) = w.nkey("dashboard");
    w.serve(&w.config(
        Authorization::Users(vec![
            nkey_user("pod web-1", &web1_pub, pod_permissions("weft", "web-1")),
            nkey_user("pod web-2", &web2_pub, pod_permissions("weft", "web-2")),
            nkey_user("control", &control_pub, control_plane_permissions("weft")),
            nkey_user("dashboard", &dashboard_pub, dashboard_permissions("weft")),
        ]),
        false,
    ));
    let url = w.url();
    w.block_on(|| async {
        let a = web1.connect(&url, Some(pod_inbox("web-1"))).await.unwrap();
        let b = web2.connect(&url, Some(pod_inbox("web-2"))).await.unwrap();
        let cp = control.connect(&url, None).await.unwrap();
        let dash = dashboard.connect(&url, None).await.unwrap();
        let refused = |conn: &weft_emitter::bus::Connection, what: &str| {
            let (link, what) = (conn.link.clone(), what.to_owned());
            async move {
                weft_testkit::wait_until_async(
                    Duration::from_secs(5),
                    &format!("the server's refusal of {what}"),
                    || {
                        let errors = link.server_errors();
                        let found = errors
                            .iter()
                            .find(|e| e.to_lowercase().contains(&what.to_lowercase()))
                            .cloned();
                        async move { found.ok_or(format!("{errors:?}")) }
                    },
                )
                .await
            }
        };

        // Pod A cannot read pod B's spec: the subscription is refused, nothing arrives,
        // while pod B's own subscription gets it.
        let mut a_reads_b = a.client.subscribe("weft.pod.web-2.spec").await.unwrap();
        let mut b_reads_b = b.client.subscribe("weft.pod.web-2.spec").await.unwrap();
        a.client.flush().await.unwrap();
        b.client.flush().await.unwrap();
        let line = refused(
            &a,
            "permissions violation for subscription to \"weft.pod.web-2.spec\"",
        )
        .await;
        println!("server: {line}");
        cp.client
            .publish("weft.pod.web-2.spec", "{}".into())
            .await
            .unwrap();
        cp.client.flush().await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), b_reads_b.next()).await;
        assert!(matches!(got, Ok(Some(_))), "pod B gets its spec");
        let leak = tokio::time::timeout(Duration::from_millis(500), a_reads_b.next()).await;
        assert!(!matches!(leak, Ok(Some(_))), "pod A read pod B's spec");

        // Pod A cannot publish pod B's status.
        let mut watcher = dash
            .client
            .subscribe("weft.pod.web-2.status")
            .await
            .unwrap();
        dash.client.flush().await.unwrap();
        a.client
            .publish("weft.pod.web-2.status", "{}".into())
            .await
            .unwrap();
        a.client.flush().await.unwrap();
        let line = refused(
            &a,
            "permissions violation for publish to \"weft.pod.web-2.status\"",
        )
        .await;
        println!("server: {line}");
        let forged = tokio::time::timeout(Duration::from_millis(500), watcher.next()).await;
        assert!(!matches!(forged, Ok(Some(_))), "a forged status arrived");

        // The dashboard cannot publish a spec.
        let mut a_own = a.client.subscribe("weft.pod.web-1.spec").await.unwrap();
        a.client.flush().await.unwrap();
        dash.client
            .publish("weft.pod.web-1.spec", "{}".into())
            .await
            .unwrap();
        dash.client.flush().await.unwrap();
        let line = refused(
            &dash,
            "permissions violation for publish to \"weft.pod.web-1.spec\"",
        )
        .await;
        println!("server: {line}");
        let spec = tokio::time::timeout(Duration::from_millis(500), a_own.next()).await;
        assert!(!matches!(spec, Ok(Some(_))), "the dashboard's spec arrived");

        // Nor may pod A read pod B's key of the spec bucket (the control plane made it).
        let js = async_nats::jetstream::new(cp.client.clone());
        weft_emitter::bus::open_bucket(&js, "weft-specs", 10)
            .await
            .unwrap();
        let pod_js = async_nats::jetstream::new(a.client.clone());
        let stream = pod_js.get_stream("KV_weft-specs").await.unwrap();
        let theirs = stream
            .create_consumer(async_nats::jetstream::consumer::push::OrderedConfig {
                name: Some("snoop".into()),
                deliver_subject: a.client.new_inbox(),
                filter_subject: "$KV.weft-specs.web-2".into(),
                ..Default::default()
            })
            .await;
        assert!(theirs.is_err(), "pod A made a consumer of pod B's key");
        let line = refused(
            &a,
            "permissions violation for publish to \"$JS.API.CONSUMER.CREATE.KV_weft-specs.snoop",
        )
        .await;
        println!("server: {line}");
        let ours = stream
            .create_consumer(async_nats::jetstream::consumer::push::OrderedConfig {
                name: Some("own".into()),
                deliver_subject: a.client.new_inbox(),
                filter_subject: "$KV.weft-specs.web-1".into(),
                ..Default::default()
            })
            .await;
        assert!(ours.is_ok(), "pod A's own key: {:?}", ours.err());

        // Pod A reads its own key directly (the agent's read beside its watch), not B's.
        for pod in ["web-1", "web-2"] {
            js.publish(format!("$KV.weft-specs.{pod}"), format!("spec of {pod}").into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
        let direct = pod_js.get_stream_no_info("KV_weft-specs").await.unwrap();
        let own = direct
            .direct_get_last_for_subject("$KV.weft-specs.web-1")
            .await
            .unwrap();
        assert_eq!(own.payload, "spec of web-1");
        // A refused request is only a timeout to the client: two seconds say enough.
        let theirs = tokio::time::timeout(
            Duration::from_secs(2),
            direct.direct_get_last_for_subject("$KV.weft-specs.web-2"),
        )
        .await;
        assert!(!matches!(theirs, Ok(Ok(_))), "pod A read pod B's key");
        let line = refused(
            &a,
            "permissions violation for publish to \"$JS.API.DIRECT.GET.KV_weft-specs.$KV.weft-specs.web-2\"",
        )
        .await;
        println!("server: {line}");
    });
}
