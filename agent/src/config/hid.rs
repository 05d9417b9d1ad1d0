//! `[[hid_scanner]]`: USB scanners in keyboard mode ("keyboard wedge"), read through evdev.

use super::{ConfigError, Validator};
use darkleg_protocol::Step;
use serde::Deserialize;
use toml::Spanned;

/// The keyboard layout the scanner types in: it picks key codes as a keyboard of that
/// layout would need them, so the gateway must read them back the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Us,
    De,
    Fr,
}

#[derive(Debug, Clone)]
pub struct HidScanner {
    /// An input device path or a glob over one directory
    /// (`/dev/input/by-id/usb-Honeywell*-event-kbd`).
    pub device: String,
    pub layout: Layout,
    pub step: Step,
    pub station_name: String,
    /// Longest scan in characters; longer is counted as garbage.
    pub max_line: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHidScanner {
    device: Spanned<String>,
    layout: Option<Layout>,
    station: Spanned<String>,
    name: Option<String>,
    max_line: Option<Spanned<i64>>,
}

impl Validator<'_> {
    pub(super) fn hid_scanners(
        &self,
        raw: Vec<RawHidScanner>,
    ) -> Result<Vec<HidScanner>, ConfigError> {
        let mut out = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            let key = |k: &str| format!("hid_scanner[{i}].{k}");
            if !r.device.get_ref().starts_with('/') {
                return Err(self.err(
                    &r.device,
                    key("device"),
                    format!("{:?} is not an absolute path", r.device.get_ref()),
                    "a path under /dev/input/by-id/, e.g. \"/dev/input/by-id/usb-Honeywell*-event-kbd\" (stable across replugs, unlike eventN)",
                ));
            }
            let step = self.station_step(&r.station, key("station"))?;
            out.push(HidScanner {
                device: r.device.into_inner(),
                layout: r.layout.unwrap_or(Layout::Us),
                step,
                station_name: r.name.unwrap_or_else(|| step.as_str().to_string()),
                max_line: match &r.max_line {
                    Some(v) => self.range(v, &key("max_line"), 16, 65_536)? as usize,
                    None => 4096,
                },
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn layout_default_and_errors() {
        let base = "[gateway]\nsite = \"s\"\nid = \"gw-01\"\ndata_dir = \"/tmp/x\"\n\n";
        let c = Config::parse(
            &format!("{base}[[hid_scanner]]\ndevice = \"/dev/input/by-id/usb-X*-event-kbd\"\nstation = \"pick\"\n"),
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.hid_scanners[0].layout, super::Layout::Us);
        let e = Config::parse(
            &format!(
                "{base}[[hid_scanner]]\ndevice = \"/dev/x\"\nstation = \"pick\"\nlayout = \"uk\"\n"
            ),
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("t.toml:9"), "{e}");
        let e = Config::parse(
            &format!("{base}[[hid_scanner]]\ndevice = \"event3\"\nstation = \"pick\"\n"),
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`hid_scanner[0].device`") && e.contains("hint:"),
            "{e}"
        );
    }
}
