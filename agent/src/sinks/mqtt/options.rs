//! Upstream config → `rumqttc::MqttOptions`: the broker connection plus the window as the
//! client's in-flight limit.

use crate::config::{BrokerLink, Upstream};
use rumqttc::MqttOptions;

/// Options for `broker`, one of `u`'s ([`BrokerLink::at`]).
pub fn mqtt_options(u: &Upstream, broker: &BrokerLink) -> Result<MqttOptions, String> {
    let mut o = crate::mqtt::options(broker, &format!("upstream {}", u.name))?;
    o.set_inflight(u.window.min(u16::MAX as usize) as u16);
    // A batch under `max_message_kb` must also fit the client's own limit, or it would be
    // rebuilt and refused on every reconnect.
    let packet = (u.max_message_bytes + 4096).max(crate::mqtt::MAX_PACKET);
    o.set_max_packet_size(crate::mqtt::MAX_PACKET, packet);
    Ok(o)
}
