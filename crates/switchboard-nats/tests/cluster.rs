//! Two nodes racing on one channel: eight publishers spread over two brokers, every offset
//! handed out once, and both nodes and the history agreeing on one order.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use switchboard::broker::conformance::{keep, Recorder};
use switchboard::broker::{Broker, BrokerEvents, HistoryRange};
use switchboard::publication::{PayloadKind, Publication};

const PER_TASK: u64 = 25;
const TASKS_PER_NODE: u64 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_publishing_at_once_get_contiguous_offsets_and_one_order() {
    let Some(server) = common::NatsServer::start() else {
        return;
    };
    let run = async {
        let prefix = format!("race-{:08x}", fastrand::u32(..));
        let mut nodes = Vec::new();
        for _ in 0..2 {
            let broker = common::broker(&server.url(), &prefix);
            let events = Recorder::new();
            broker
                .start(Arc::clone(&events) as Arc<dyn BrokerEvents>)
                .await
                .unwrap_or_else(|e| panic!("start: {e}"));
            broker
                .subscribe("race:room")
                .await
                .unwrap_or_else(|e| panic!("subscribe: {e}"));
            nodes.push((broker, events));
        }
        let mut tasks = Vec::new();
        for (n, (broker, _)) in nodes.iter().enumerate() {
            for t in 0..TASKS_PER_NODE {
                let broker = Arc::clone(broker);
                tasks.push(tokio::spawn(async move {
                    let mut got = Vec::new();
                    for i in 0..PER_TASK {
                        let data = Bytes::from(format!("n{n}t{t}i{i}"));
                        let publication =
                            Publication::from_payload(PayloadKind::Text, data.clone());
                        let position = broker
                            .publish("race:room", &publication, &keep(1000))
                            .await
                            .unwrap_or_else(|e| panic!("publish: {e}"))
                            .unwrap_or_else(|| panic!("a position"));
                        got.push((position.offset, data));
                    }
                    got
                }));
            }
        }
        let mut assigned = Vec::new();
        for task in tasks {
            assigned.extend(task.await.unwrap_or_else(|e| panic!("publisher: {e}")));
        }
        assigned.sort();
        let total = PER_TASK * TASKS_PER_NODE * 2;
        let offsets: Vec<u64> = assigned.iter().map(|(offset, _)| *offset).collect();
        assert_eq!(
            offsets,
            (1..=total).collect::<Vec<_>>(),
            "every offset once"
        );

        let expected: Vec<(u64, Bytes)> = assigned;
        for (_, events) in &nodes {
            let seen = events
                .wait_publications("race:room", usize::try_from(total).unwrap_or(0))
                .await;
            let seen: Vec<(u64, Bytes)> = seen.into_iter().map(|(o, _, d)| (o, d)).collect();
            assert_eq!(
                seen, expected,
                "each node sees every publication, in offset order"
            );
        }
        let page = nodes[0]
            .0
            .history("race:room", &HistoryRange::default())
            .await
            .unwrap_or_else(|e| panic!("history: {e}"));
        let kept: Vec<(u64, Bytes)> = page
            .publications
            .iter()
            .map(|p| (p.offset, p.payload().1.clone()))
            .collect();
        assert_eq!(kept, expected, "history holds the same order");
        for (broker, _) in nodes {
            broker.stop().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap_or_else(|_| panic!("the race did not finish in a minute"));
}
