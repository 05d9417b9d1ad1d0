//! A QoS 1 publisher's side of MQTT, without I/O: CONNECT, PUBLISH, PINGREQ and DISCONNECT
//! encoded into a buffer the caller writes out whole, and what a broker sends back decoded
//! into the few answers a publisher acts on. The packets are rumqttc's `mqttbytes`, in 3.1.1
//! and 5; what this adds is the publisher's state: which packet ids are in use.
//!
//! Why not rumqttc's event loop for the upstreams: it writes and flushes every publish on
//! its own — one syscall per event — and reports each one through two channels; a backlog
//! drained one event per message went slower than a Mosquitto bridge. Here a burst of
//! publishes is one buffer and one write, and a burst of PUBACKs is one read.

use bytes::BytesMut;
use rumqttc::mqttbytes as m4;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes as m5;
use rumqttc::v5::mqttbytes::v5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

/// What goes into the CONNECT.
#[derive(Debug, Clone)]
pub struct Hello {
    pub client_id: String,
    pub keep_alive_secs: u16,
    pub credentials: Option<(String, String)>,
    /// MQTT 5: how long the broker keeps the session past a disconnect.
    pub session_expiry_secs: u32,
    /// Largest packet we accept from the broker.
    pub max_incoming: u32,
}

/// A broker's packet, as far as a publisher cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    ConnAck {
        session_present: bool,
        /// MQTT 5: how many unacknowledged publishes the broker takes at once.
        receive_maximum: Option<u16>,
        /// MQTT 5: the largest packet the broker takes.
        max_packet: Option<u32>,
        /// MQTT 5: the keep-alive the broker wants instead of ours (seconds).
        server_keep_alive: Option<u16>,
    },
    /// The broker turned the CONNECT down (`reason` names its return code).
    ConnRefused(String),
    /// `refusal` is set when an MQTT 5 broker answered with a failure reason code.
    PubAck {
        pkid: u16,
        refusal: Option<String>,
    },
    PingResp,
    /// A publish from the broker (a subscription a persistent session kept): acknowledged
    /// as its QoS asks (PUBACK for 1, PUBREC for 2; `pkid` 0 for QoS 0) and dropped — an
    /// upstream link only sends.
    Publish {
        pkid: u16,
        exactly_once: bool,
    },
    /// The broker's release of a QoS 2 publish we received: owed a PUBCOMP.
    PubRel {
        pkid: u16,
    },
    /// MQTT 5: the broker is closing the connection, for this reason.
    Disconnect(String),
    /// Anything else a broker may send (PUBREC…): not ours to act on.
    Other,
}

/// Packet ids in use on one connection, and the next one to try.
pub struct Pkids {
    used: Box<[u64; 1024]>,
    next: u16,
    count: usize,
}

impl Default for Pkids {
    fn default() -> Self {
        Pkids {
            used: Box::new([0; 1024]),
            next: 1,
            count: 0,
        }
    }
}

impl Pkids {
    /// A free packet id (never 0), or `None` if all 65,535 are in use.
    pub fn take(&mut self) -> Option<u16> {
        if self.count >= u16::MAX as usize {
            return None;
        }
        loop {
            let id = self.next;
            self.next = if id == u16::MAX { 1 } else { id + 1 };
            let (word, bit) = (id as usize / 64, id as usize % 64);
            if self.used[word] & (1 << bit) == 0 {
                self.used[word] |= 1 << bit;
                self.count += 1;
                return Some(id);
            }
        }
    }

    /// `id` was acknowledged; true if it was in use.
    pub fn release(&mut self, id: u16) -> bool {
        let (word, bit) = (id as usize / 64, id as usize % 64);
        let was = self.used[word] & (1 << bit) != 0;
        self.used[word] &= !(1 << bit);
        if was {
            self.count -= 1;
        }
        was
    }

    pub fn in_use(&self) -> usize {
        self.count
    }
}

/// Appends a CONNECT. Sessions are kept (clean session off): the broker's QoS state survives
/// our reconnects; our own unacknowledged publishes come again from the store regardless.
pub fn connect(version: Version, hello: &Hello, out: &mut BytesMut) -> Result<(), String> {
    let r = match version {
        Version::V311 => {
            let mut c = v4::Connect::new(hello.client_id.clone());
            c.keep_alive = hello.keep_alive_secs;
            c.clean_session = false;
            if let Some((u, p)) = &hello.credentials {
                c.set_login(u.clone(), p.clone());
            }
            c.write(out).map_err(|e| e.to_string())
        }
        Version::V5 => {
            let properties = v5::ConnectProperties {
                session_expiry_interval: Some(hello.session_expiry_secs),
                max_packet_size: Some(hello.max_incoming),
                ..Default::default()
            };
            let connect = v5::Connect {
                keep_alive: hello.keep_alive_secs,
                client_id: hello.client_id.clone(),
                clean_start: false,
                properties: Some(properties),
            };
            let login = hello
                .credentials
                .as_ref()
                .map(|(u, p)| v5::Login::new(u.clone(), p.clone()));
            v5::Packet::Connect(connect, None, login)
                .write(out, None)
                .map_err(|e| e.to_string())
        }
    };
    r.map(|_| ()).map_err(|e| format!("encoding CONNECT: {e}"))
}

/// Appends a QoS 1 publish under `pkid`.
pub fn publish(
    version: Version,
    pkid: u16,
    topic: &str,
    payload: bytes::Bytes,
    out: &mut BytesMut,
) -> Result<(), String> {
    let r = match version {
        Version::V311 => v4::Publish {
            dup: false,
            qos: m4::QoS::AtLeastOnce,
            retain: false,
            topic: topic.to_string(),
            pkid,
            payload,
        }
        .write(out)
        .map_err(|e| e.to_string()),
        Version::V5 => v5::Publish {
            dup: false,
            qos: m5::QoS::AtLeastOnce,
            retain: false,
            topic: bytes::Bytes::copy_from_slice(topic.as_bytes()),
            pkid,
            payload,
            properties: None,
        }
        .write(out)
        .map_err(|e| e.to_string()),
    };
    r.map(|_| ())
        .map_err(|e| format!("encoding a publish: {e}"))
}

pub fn ping(version: Version, out: &mut BytesMut) {
    // PINGREQ is the same two bytes in both versions.
    let _ = version;
    out.extend_from_slice(&[0xC0, 0x00]);
}

/// A normal DISCONNECT (MQTT 5 reason 0x00, which the short form means).
pub fn disconnect(out: &mut BytesMut) {
    out.extend_from_slice(&[0xE0, 0x00]);
}

/// What we owe the broker for one of its packets: PUBACK (a QoS 1 publish), PUBREC (a QoS 2
/// one) or PUBCOMP (its PUBREL); nothing for anything else. A broker given the wrong answer
/// keeps resending, or closes the connection.
pub fn answer(version: Version, packet: &Incoming, out: &mut BytesMut) {
    // Writing a fixed-size ack into a growable buffer cannot fail.
    let _ = match (packet, version) {
        (Incoming::Publish { pkid: 0, .. }, _) => return,
        (&Incoming::Publish { pkid, exactly_once }, Version::V311) => match exactly_once {
            false => v4::PubAck::new(pkid).write(out).map(drop).map_err(drop),
            true => v4::PubRec::new(pkid).write(out).map(drop).map_err(drop),
        },
        (&Incoming::Publish { pkid, exactly_once }, Version::V5) => match exactly_once {
            false => v5::PubAck::new(pkid, None)
                .write(out)
                .map(drop)
                .map_err(drop),
            true => v5::PubRec::new(pkid, None)
                .write(out)
                .map(drop)
                .map_err(drop),
        },
        (&Incoming::PubRel { pkid }, Version::V311) => {
            v4::PubComp::new(pkid).write(out).map(drop).map_err(drop)
        }
        (&Incoming::PubRel { pkid }, Version::V5) => v5::PubComp::new(pkid, None)
            .write(out)
            .map(drop)
            .map_err(drop),
        _ => return,
    };
}

/// Takes the next whole packet off `buf`; `Ok(None)` when more bytes are needed.
pub fn decode(version: Version, buf: &mut BytesMut, max: u32) -> Result<Option<Incoming>, String> {
    if buf.is_empty() {
        return Ok(None);
    }
    let before = buf.len();
    // "Insufficient bytes" is only "wait for more" while the frame is still in the buffer:
    // raised after the frame was taken off, it is a packet shorter than its own fields say
    // (a 3.1.1 CONNACK read as MQTT 5, say), which must not vanish silently.
    let short = |buf: &BytesMut| match buf.len() == before {
        true => Ok(None),
        false => Err("malformed packet from the broker: shorter than its fields".to_string()),
    };
    match version {
        Version::V311 => match v4::Packet::read(buf, max as usize) {
            Ok(p) => Ok(Some(incoming_v311(p))),
            Err(m4::Error::InsufficientBytes(_)) => short(buf),
            Err(e) => Err(format!("malformed packet from the broker: {e}")),
        },
        Version::V5 => match v5::Packet::read(buf, Some(max)) {
            Ok(p) => Ok(Some(incoming_v5(p))),
            Err(m5::Error::InsufficientBytes(_)) => short(buf),
            Err(e) => Err(format!("malformed packet from the broker: {e}")),
        },
    }
}

fn incoming_v311(p: v4::Packet) -> Incoming {
    match p {
        v4::Packet::ConnAck(c) => match c.code {
            v4::ConnectReturnCode::Success => Incoming::ConnAck {
                session_present: c.session_present,
                receive_maximum: None,
                max_packet: None,
                server_keep_alive: None,
            },
            code => Incoming::ConnRefused(format!("the broker turned the CONNECT down: {code:?}")),
        },
        v4::Packet::PubAck(a) => Incoming::PubAck {
            pkid: a.pkid,
            refusal: None,
        },
        v4::Packet::PingResp => Incoming::PingResp,
        v4::Packet::Publish(p) => Incoming::Publish {
            pkid: p.pkid,
            exactly_once: p.qos == m4::QoS::ExactlyOnce,
        },
        v4::Packet::PubRel(r) => Incoming::PubRel { pkid: r.pkid },
        _ => Incoming::Other,
    }
}

fn incoming_v5(p: v5::Packet) -> Incoming {
    match p {
        v5::Packet::ConnAck(c) => match c.code {
            v5::ConnectReturnCode::Success => Incoming::ConnAck {
                session_present: c.session_present,
                receive_maximum: c.properties.as_ref().and_then(|p| p.receive_max),
                max_packet: c.properties.as_ref().and_then(|p| p.max_packet_size),
                server_keep_alive: c.properties.as_ref().and_then(|p| p.server_keep_alive),
            },
            code => {
                let detail = c.properties.and_then(|p| p.reason_string);
                Incoming::ConnRefused(match detail {
                    Some(d) => format!("the broker turned the CONNECT down: {code:?}: {d}"),
                    None => format!("the broker turned the CONNECT down: {code:?}"),
                })
            }
        },
        v5::Packet::PubAck(a) => Incoming::PubAck {
            pkid: a.pkid,
            refusal: refusal(a.reason).map(|name| {
                match a.properties.and_then(|p| p.reason_string) {
                    Some(detail) => format!("{name}: {detail}"),
                    None => name.to_string(),
                }
            }),
        },
        v5::Packet::PingResp(_) => Incoming::PingResp,
        v5::Packet::Publish(p) => Incoming::Publish {
            pkid: p.pkid,
            exactly_once: p.qos == m5::QoS::ExactlyOnce,
        },
        v5::Packet::PubRel(r) => Incoming::PubRel { pkid: r.pkid },
        v5::Packet::Disconnect(d) => {
            let detail = d.properties.and_then(|p| p.reason_string);
            Incoming::Disconnect(match detail {
                Some(s) => format!("{:?}: {s}", d.reason_code),
                None => format!("{:?}", d.reason_code),
            })
        }
        _ => Incoming::Other,
    }
}

/// The name of a PUBACK reason code that means "not delivered" (≥ 0x80), as MQTT 5 says it.
pub fn refusal(reason: v5::PubAckReason) -> Option<&'static str> {
    Some(match reason {
        // 0x10: accepted, nobody subscribed yet — delivered as far as the broker goes.
        v5::PubAckReason::Success | v5::PubAckReason::NoMatchingSubscribers => return None,
        v5::PubAckReason::UnspecifiedError => "unspecified error (0x80)",
        v5::PubAckReason::ImplementationSpecificError => "implementation specific error (0x83)",
        v5::PubAckReason::NotAuthorized => "not authorized (0x87)",
        v5::PubAckReason::TopicNameInvalid => "topic name invalid (0x90)",
        v5::PubAckReason::PacketIdentifierInUse => "packet identifier in use (0x91)",
        v5::PubAckReason::QuotaExceeded => "quota exceeded (0x97)",
        v5::PubAckReason::PayloadFormatInvalid => "payload format invalid (0x99)",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            client_id: "dock-1".into(),
            keep_alive_secs: 30,
            credentials: Some(("gw".into(), "s3cret".into())),
            session_expiry_secs: 3600,
            max_incoming: 1 << 20,
        }
    }

    #[test]
    fn only_failure_codes_are_refusals() {
        assert_eq!(refusal(v5::PubAckReason::Success), None);
        assert_eq!(refusal(v5::PubAckReason::NoMatchingSubscribers), None);
        assert_eq!(
            refusal(v5::PubAckReason::NotAuthorized),
            Some("not authorized (0x87)")
        );
        assert_eq!(
            refusal(v5::PubAckReason::QuotaExceeded),
            Some("quota exceeded (0x97)")
        );
    }

    #[test]
    fn pkids_skip_the_ones_in_use_and_never_give_zero() {
        let mut p = Pkids::default();
        assert_eq!(p.take(), Some(1));
        assert_eq!(p.take(), Some(2));
        // Wrap around: everything but 1 and 2 is taken and released again.
        for _ in 3..=u16::MAX {
            let id = p.take().unwrap();
            assert_ne!(id, 0);
            assert!(p.release(id));
        }
        assert_eq!(p.in_use(), 2);
        assert_eq!(p.take(), Some(3), "1 and 2 are still unacknowledged");
        assert!(!p.release(9), "an unknown id releases nothing");
        assert!(p.release(1));
        assert_eq!(p.in_use(), 2);
    }

    #[test]
    fn pkids_run_out_rather_than_reuse() {
        let mut p = Pkids::default();
        for _ in 0..u16::MAX {
            p.take().unwrap();
        }
        assert_eq!(p.take(), None);
        p.release(700);
        assert_eq!(p.take(), Some(700));
    }

    /// A broker's publish (a session someone subscribed under our client id) gets the ack
    /// its QoS asks for, in both versions; a QoS 2 one's PUBREL gets its PUBCOMP.
    #[test]
    fn a_brokers_publishes_are_answered_as_their_qos_asks() {
        let publish4 = |qos, pkid| {
            let mut p = v4::Publish::new("x", qos, "y");
            p.pkid = pkid;
            let mut b = BytesMut::new();
            p.write(&mut b).unwrap();
            b
        };
        let publish5 = |qos, pkid| {
            let mut p = v5::Publish::new("x", qos, "y", None);
            p.pkid = pkid;
            let mut b = BytesMut::new();
            v5::Packet::Publish(p).write(&mut b, None).unwrap();
            b
        };
        let mut rel4 = BytesMut::new();
        v4::PubRel::new(5).write(&mut rel4).unwrap();
        let mut rel5 = BytesMut::new();
        v5::Packet::PubRel(v5::PubRel::new(5, None))
            .write(&mut rel5, None)
            .unwrap();
        let cases = [
            (Version::V311, publish4(m4::QoS::AtMostOnce, 0), None),
            (
                Version::V311,
                publish4(m4::QoS::AtLeastOnce, 3),
                Some((0x40, 3)),
            ),
            (
                Version::V311,
                publish4(m4::QoS::ExactlyOnce, 4),
                Some((0x50, 4)),
            ),
            (Version::V311, rel4, Some((0x70, 5))),
            (Version::V5, publish5(m5::QoS::AtMostOnce, 0), None),
            (
                Version::V5,
                publish5(m5::QoS::AtLeastOnce, 3),
                Some((0x40, 3)),
            ),
            (
                Version::V5,
                publish5(m5::QoS::ExactlyOnce, 4),
                Some((0x50, 4)),
            ),
            (Version::V5, rel5, Some((0x70, 5))),
        ];
        for (version, mut wire, want) in cases {
            let packet = decode(version, &mut wire, 1 << 20).unwrap().unwrap();
            let mut out = BytesMut::new();
            answer(version, &packet, &mut out);
            // The type byte, then the packet id echoed after the remaining length.
            let got = (!out.is_empty()).then(|| (out[0], u16::from_be_bytes([out[2], out[3]])));
            assert_eq!(got, want, "{version:?}");
        }
    }

    #[test]
    fn connect_and_publishes_read_back_as_written_in_both_versions() {
        // v3.1.1: what a broker would parse.
        let mut out = BytesMut::new();
        connect(Version::V311, &hello(), &mut out).unwrap();
        publish(Version::V311, 7, "t/a", "{}".into(), &mut out).unwrap();
        publish(Version::V311, 8, "t/b", "[1]".into(), &mut out).unwrap();
        match v4::Packet::read(&mut out, 1 << 20).unwrap() {
            v4::Packet::Connect(c) => {
                assert_eq!(c.client_id, "dock-1");
                assert!(!c.clean_session);
                assert_eq!(c.login.unwrap().username, "gw");
            }
            other => panic!("{other:?}"),
        }
        for (pkid, topic) in [(7, "t/a"), (8, "t/b")] {
            match v4::Packet::read(&mut out, 1 << 20).unwrap() {
                v4::Packet::Publish(p) => {
                    assert_eq!((p.pkid, p.topic.as_str()), (pkid, topic));
                    assert_eq!(p.qos, m4::QoS::AtLeastOnce);
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(out.is_empty());

        let mut out = BytesMut::new();
        connect(Version::V5, &hello(), &mut out).unwrap();
        publish(Version::V5, 9, "t/c", "x".into(), &mut out).unwrap();
        match v5::Packet::read(&mut out, None).unwrap() {
            v5::Packet::Connect(c, _, login) => {
                assert!(!c.clean_start);
                let props = c.properties.unwrap();
                assert_eq!(props.session_expiry_interval, Some(3600));
                assert_eq!(login.unwrap().password, "s3cret");
            }
            other => panic!("{other:?}"),
        }
        match v5::Packet::read(&mut out, None).unwrap() {
            v5::Packet::Publish(p) => assert_eq!((p.pkid, &p.topic[..]), (9, &b"t/c"[..])),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_burst_of_acks_decodes_one_at_a_time_and_waits_for_a_split_one() {
        let mut wire = BytesMut::new();
        for pkid in [1u16, 2, 3] {
            v4::PubAck::new(pkid).write(&mut wire).unwrap();
        }
        wire.extend_from_slice(&[0xD0, 0x00]); // PINGRESP
        let whole = wire.clone();
        // Fed one byte at a time, the same packets come out, none early.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in whole.iter() {
            buf.extend_from_slice(&[*b]);
            while let Some(p) = decode(Version::V311, &mut buf, 1 << 20).unwrap() {
                got.push(p);
            }
        }
        let ack = |pkid| Incoming::PubAck {
            pkid,
            refusal: None,
        };
        assert_eq!(got, vec![ack(1), ack(2), ack(3), Incoming::PingResp]);
    }

    #[test]
    fn mqtt5_answers_carry_their_reasons() {
        let mut wire = BytesMut::new();
        let mut refused = v5::PubAck::new(4, None);
        refused.reason = v5::PubAckReason::NotAuthorized;
        refused.properties = Some(v5::PubAckProperties {
            reason_string: Some("acl".into()),
            user_properties: vec![],
        });
        v5::Packet::PubAck(refused).write(&mut wire, None).unwrap();
        let connack = v5::ConnAck {
            session_present: true,
            code: v5::ConnectReturnCode::Success,
            properties: Some(v5::ConnAckProperties {
                session_expiry_interval: None,
                receive_max: Some(32),
                max_qos: None,
                retain_available: None,
                max_packet_size: None,
                assigned_client_identifier: None,
                topic_alias_max: None,
                reason_string: None,
                user_properties: vec![],
                wildcard_subscription_available: None,
                subscription_identifiers_available: None,
                shared_subscription_available: None,
                server_keep_alive: None,
                response_information: None,
                server_reference: None,
                authentication_method: None,
                authentication_data: None,
            }),
        };
        v5::Packet::ConnAck(connack).write(&mut wire, None).unwrap();
        assert_eq!(
            decode(Version::V5, &mut wire, 1 << 20).unwrap(),
            Some(Incoming::PubAck {
                pkid: 4,
                refusal: Some("not authorized (0x87): acl".into())
            })
        );
        assert_eq!(
            decode(Version::V5, &mut wire, 1 << 20).unwrap(),
            Some(Incoming::ConnAck {
                session_present: true,
                receive_maximum: Some(32),
                max_packet: None,
                server_keep_alive: None
            })
        );
    }

    #[test]
    fn a_refused_connect_and_garbage_are_named() {
        let mut wire = BytesMut::new();
        v4::ConnAck::new(v4::ConnectReturnCode::BadUserNamePassword, false)
            .write(&mut wire)
            .unwrap();
        match decode(Version::V311, &mut wire, 1 << 20).unwrap() {
            Some(Incoming::ConnRefused(why)) => {
                assert!(why.contains("BadUserNamePassword"));
                // Not "connection refused": that means no broker answered (no fallback).
                assert!(!why.to_lowercase().contains("connection refused"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        let mut garbage = BytesMut::from(&[0x00u8, 0x00][..]);
        let e = decode(Version::V311, &mut garbage, 1 << 20).unwrap_err();
        assert!(e.contains("malformed packet"), "{e}");
        // A 3.1.1 broker's CONNACK (return code 1) to our MQTT 5 CONNECT: whole as a frame,
        // short as an MQTT 5 CONNACK. An error, not a packet that silently disappears.
        let mut old = BytesMut::from(&[0x20u8, 0x02, 0x00, 0x01][..]);
        let e = decode(Version::V5, &mut old, 1 << 20).unwrap_err();
        assert!(e.contains("malformed packet"), "{e}");
    }
}
