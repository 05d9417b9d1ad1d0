//! Outbox rows → MQTT publishes, no I/O: derived messages one each, runs of scans one each
//! (`darkleg.scan.v1`) or up to `batch` per message (`darkleg.batch.v1`).
//!
//! Two limits bind, and both are exact rather than estimated:
//! - at most `room` publishes per call — the client's request channel holds `window` plus
//!   a little, and a read of `room × batch` rows that milestone rows cut into short runs
//!   would otherwise overflow it (the batched upstream that never drained);
//! - a batch's *serialized* size stays under `max_bytes` (escaped GS characters, long
//!   names and relay hops make any per-event estimate wrong).
//!
//! Rows past the last publish returned are simply not consumed: the caller's cursor stops at
//! the last row handed over, and the next read starts after it.

use crate::store::{Item, Pending};
use darkleg_protocol::upstream::{hop, scan_json, BatchBuilder, Origin};

/// What a publish looks like on this upstream.
pub struct Shape<'a> {
    pub batch: usize,
    /// Largest payload of a batch message (a single scan or message is sent whatever its size).
    pub max_bytes: usize,
    pub events_topic: &'a str,
    pub topic_prefix: &'a str,
    pub site: &'a str,
    pub gateway: &'a str,
}

#[derive(Debug)]
pub struct Publish {
    pub topic: String,
    pub payload: String,
    /// Outbox rows it carries, in order.
    pub rows: Vec<i64>,
}

impl Publish {
    pub fn last_row(&self) -> i64 {
        *self.rows.last().expect("a publish carries rows")
    }
}

/// Up to `room` publishes from the start of `rows`.
pub fn plan(rows: Vec<Pending>, room: usize, shape: &Shape<'_>) -> Vec<Publish> {
    let me = hop(shape.site, shape.gateway);
    let here = [me.clone()];
    let mut out: Vec<Publish> = Vec::new();
    let mut run = Run::default();
    for p in rows {
        if out.len() >= room {
            break;
        }
        match p.item {
            Item::Event(ev, provenance) => {
                // A relayed scan goes on with this gateway appended to its trace.
                let trace: Option<Vec<String>> = provenance
                    .as_ref()
                    .map(|p| p.hops.iter().cloned().chain([me.clone()]).collect());
                let origin = match (&provenance, &trace) {
                    (Some(p), Some(t)) => Origin {
                        site: &p.site,
                        gateway: &p.gateway,
                        hops: t,
                    },
                    _ => Origin {
                        site: shape.site,
                        gateway: shape.gateway,
                        hops: &here,
                    },
                };
                let json = scan_json(&ev, origin);
                if shape.batch == 1 {
                    out.push(Publish {
                        topic: shape.events_topic.to_string(),
                        payload: json,
                        rows: vec![p.row],
                    });
                    continue;
                }
                if !run.is_empty() && run.body.len_with(&json) > shape.max_bytes {
                    out.push(run.take(shape.events_topic));
                    if out.len() >= room {
                        break;
                    }
                }
                run.body.push(&json);
                run.rows.push(p.row);
                if run.rows.len() >= shape.batch {
                    out.push(run.take(shape.events_topic));
                }
            }
            Item::Message { topic, payload } => {
                if !run.is_empty() {
                    out.push(run.take(shape.events_topic));
                    if out.len() >= room {
                        break;
                    }
                }
                out.push(Publish {
                    topic: format!("{}/{topic}", shape.topic_prefix),
                    payload,
                    rows: vec![p.row],
                });
            }
        }
    }
    if !run.is_empty() && out.len() < room {
        out.push(run.take(shape.events_topic));
    }
    out
}

#[derive(Default)]
struct Run {
    body: BatchBuilder,
    rows: Vec<i64>,
}

impl Run {
    fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn take(&mut self, topic: &str) -> Publish {
        let run = std::mem::take(self);
        Publish {
            topic: topic.to_string(),
            payload: run.body.finish(),
            rows: run.rows,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Provenance;
    use darkleg_protocol::{EventId, ScanEvent, Step};
    use proptest::prelude::*;

    fn scan(row: i64, code: &str, hops: usize) -> Pending {
        let device = "d".repeat(64);
        let provenance = (hops > 0).then(|| {
            Box::new(Provenance {
                site: "s".repeat(64),
                gateway: "g".repeat(64),
                hops: (0..hops)
                    .map(|i| format!("{}/{i}", "h".repeat(60)))
                    .collect(),
            })
        });
        Pending {
            row,
            item: Item::Event(
                ScanEvent {
                    event_id: EventId::new(&device, row as u64),
                    device,
                    seq: row as u64,
                    step: Step::Pack,
                    code: code.to_string(),
                    symbology: Some("]C1".into()),
                    station: Some("s".repeat(64)),
                    operator: Some("o".repeat(64)),
                    captured_at_ms: 1_795_300_000_000,
                    received_at_ms: 1_795_300_000_001,
                },
                provenance,
            ),
        }
    }

    fn message(row: i64) -> Pending {
        Pending {
            row,
            item: Item::Message {
                topic: format!("merchants/m1/parcels/{row}"),
                payload: "{}".into(),
            },
        }
    }

    fn shape(batch: usize, max_bytes: usize) -> Shape<'static> {
        Shape {
            batch,
            max_bytes,
            events_topic: "darkleg/v1/site/gw/events",
            topic_prefix: "darkleg/v1",
            site: "site",
            gateway: "gw",
        }
    }

    #[test]
    fn milestones_cutting_scan_runs_never_exceed_the_room() {
        // The pack-station pattern: order, SSCC, milestone, order, SSCC, milestone, …
        let rows: Vec<Pending> = (1..=600)
            .map(|r| {
                if r % 3 == 0 {
                    message(r)
                } else {
                    scan(r, "SO-1", 0)
                }
            })
            .collect();
        let out = plan(rows, 8, &shape(50, 120 * 1024));
        assert_eq!(out.len(), 8);
        // Consumed rows are a prefix, in order, each once.
        let consumed: Vec<i64> = out.iter().flat_map(|p| p.rows.clone()).collect();
        assert_eq!(consumed, (1..=consumed.len() as i64).collect::<Vec<_>>());
    }

    #[test]
    fn a_batch_of_escaped_long_scans_stays_under_the_limit_measured() {
        // GS characters are escaped as \u001d (6 bytes each) and names are 64 characters.
        let code = "0109501101020917\u{1d}".repeat(20);
        let rows: Vec<Pending> = (1..=500).map(|r| scan(r, &code, 8)).collect();
        let limit = 120 * 1024;
        let out = plan(rows, 1000, &shape(500, limit));
        assert!(out.len() > 1, "the limit must split this backlog");
        for p in &out {
            assert!(p.payload.len() <= limit, "{} > {limit}", p.payload.len());
            let v: serde_json::Value = serde_json::from_str(&p.payload).unwrap();
            assert_eq!(v["events"].as_array().unwrap().len(), p.rows.len());
        }
    }

    proptest! {
        /// Any mix of rows, any batch, room and limit: at most `room` publishes, a prefix of
        /// the rows consumed in order, every batch under the limit unless it holds one scan,
        /// and progress whenever there is room.
        #[test]
        fn any_mix_drains(kinds in proptest::collection::vec(0u8..4, 0..400),
                          batch in 1usize..500, room in 1usize..64,
                          max_kb in 1usize..130) {
            let rows: Vec<Pending> = kinds.iter().enumerate().map(|(i, k)| {
                let r = i as i64 + 1;
                match k { 0 => message(r), 1 => scan(r, "0109501101020917\u{1d}10A", 3), _ => scan(r, "SO-000001", 0) }
            }).collect();
            let n = rows.len();
            let limit = max_kb * 1024;
            let out = plan(rows, room, &shape(batch, limit));
            prop_assert!(out.len() <= room);
            prop_assert!(n == 0 || !out.is_empty());
            let consumed: Vec<i64> = out.iter().flat_map(|p| p.rows.clone()).collect();
            prop_assert_eq!(&consumed, &(1..=consumed.len() as i64).collect::<Vec<_>>());
            for p in &out {
                prop_assert!(p.rows.len() <= batch);
                prop_assert!(p.rows.len() == 1 || p.payload.len() <= limit);
            }
        }
    }
}
