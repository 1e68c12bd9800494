//! The harness itself works: nats-server in the hub, a client in a pod reaching it over the
//! control link, and everything gone afterwards.

use std::time::Duration;

use futures::StreamExt;
use weft_testkit::hub::Hub;
use weft_testkit::nats::NatsServer;
use weft_testkit::require_root;

#[test]
fn a_pod_reaches_nats_in_the_hub_and_everything_is_cleaned_up() {
    require_root();
    let names;
    {
        let mut hub = Hub::new().unwrap();
        let pod = hub.add_pod("harness").unwrap();
        names = (hub.ns.name().to_owned(), pod.ns.name().to_owned());
        let server = hub.ns.enter(|| NatsServer::start().unwrap());
        let url = server.url_at(&pod.hub_addr);
        let got = hub.block_on(|| async {
            let here = async_nats::connect(server.url()).await.unwrap();
            let mut sub = here.subscribe("t").await.unwrap();
            here.flush().await.unwrap();
            pod.ns.enter(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(async {
                        let there = async_nats::connect(url.as_str()).await.unwrap();
                        there.publish("t", "from the pod".into()).await.unwrap();
                        there.flush().await.unwrap();
                    })
            });
            tokio::time::timeout(Duration::from_secs(5), sub.next())
                .await
                .unwrap()
                .unwrap()
                .payload
        });
        assert_eq!(&got[..], b"from the pod");
    }
    let list = String::from_utf8(
        std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        !list.contains(&names.0) && !list.contains(&names.1),
        "{list}"
    );
}
