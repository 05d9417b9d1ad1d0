//! Upstream config → `rumqttc::MqttOptions`: the broker connection plus the window as the
//! client's in-flight limit.

use crate::config::Upstream;
use rumqttc::MqttOptions;

/// Batches stay under this, which fits the smallest limit of the clustered and managed
/// brokers darkleg targets (AWS IoT: 128 KiB).
pub const MAX_BATCH_BYTES: usize = 120 * 1024;

pub fn mqtt_options(u: &Upstream) -> Result<MqttOptions, String> {
    let mut o = crate::mqtt::options(&u.link, &format!("upstream {}", u.name))?;
    o.set_inflight(u.window.min(u16::MAX as usize) as u16);
    Ok(o)
}
