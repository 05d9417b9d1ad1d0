//! Realistic codes for a small warehouse: item GTINs at pick, the parcel's SSCC at pack,
//! and a carrier label at handover — each with valid check digits.

use darkleg_protocol::Step;

/// GS1 mod-10 check digit over `digits` (the protocol's own rule; digits only).
pub fn gs1_check_digit(digits: &str) -> u8 {
    darkleg_protocol::barcode::gs1::check_digit(digits).expect("workload codes are digits")
}

/// An SSCC (AI 00) for parcel `n`: extension 0, company prefix 8712345, serial n.
pub fn sscc(n: u64) -> String {
    format!("00{}", sscc_key("8712345", n % 1_000_000_000))
}

/// The 18 SSCC digits (no AI) for serial `n` under a GS1 company prefix: extension 0, the
/// prefix, the serial padded to fill 17 digits, the check digit.
pub fn sscc_key(company_prefix: &str, n: u64) -> String {
    let body = format!("0{company_prefix}{:0w$}", n, w = 16 - company_prefix.len());
    format!("{body}{}", gs1_check_digit(&body))
}

/// A GTIN-14 (AI 01) for item `n`.
pub fn gtin(n: u64) -> String {
    let body = format!("0871234{:06}", n % 1_000_000);
    format!("01{body}{}", gs1_check_digit(&body))
}

/// A DHL Express waybill: 9 digits plus their value mod 7.
pub fn dhl_waybill(n: u64) -> String {
    let body = 100_000_000 + n % 900_000_000;
    format!("{body}{}", body % 7)
}

/// One scan a virtual scanner will make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedScan {
    pub step: Step,
    pub code: String,
    pub symbology: Option<String>,
}

/// Scans of parcel `n` at `step`: two items picked, the SSCC packed, the waybill handed over.
pub fn parcel_scans(n: u64, step: Step) -> Vec<PlannedScan> {
    let s = |code: String, sym: &str| PlannedScan {
        step,
        code,
        symbology: Some(sym.to_string()),
    };
    match step {
        Step::Pick => vec![s(gtin(n * 2), "]C1"), s(gtin(n * 2 + 1), "]C1")],
        Step::Pack => vec![s(sscc(n), "]C1")],
        Step::Handover => vec![s(dhl_waybill(n), "]C0")],
        Step::ReturnReceipt | Step::Exception => vec![s(sscc(n), "]C1")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_digits_match_published_examples() {
        // GS1 General Specifications example SSCC 106141411234567897 (without the AI).
        assert_eq!(gs1_check_digit("10614141123456789"), 7);
        // GTIN-13 4006381333931.
        assert_eq!(gs1_check_digit("400638133393"), 1);
        assert_eq!(sscc(1).len(), 20);
        assert_eq!(gtin(1).len(), 16);
        let w = dhl_waybill(5);
        let body: u64 = w[..9].parse().unwrap();
        assert_eq!(w[9..].parse::<u64>().unwrap(), body % 7);
    }
}
