//! Automatic SI prefixes for axis and colour-bar labels, so a creeping flow of 2 mm/s
//! reads "2.1 mm/s" instead of "0.0021 m/s".

/// A display unit: multiply a value in the base unit by `scale` to show it in `label`.
#[derive(Debug, Clone, PartialEq)]
pub struct SiUnit {
    /// Prefixed unit, e.g. `mm/s`.
    pub label: String,
    /// Factor from the base unit to the prefixed one, e.g. 1e3 for m/s → mm/s.
    pub scale: f64,
}

/// Prefixes from the base unit down to pico: name, size, and the factor to it.
const PREFIXES: [(&str, f64, f64); 5] = [
    ("", 1.0, 1.0),
    ("m", 1e-3, 1e3),
    ("µ", 1e-6, 1e6),
    ("n", 1e-9, 1e9),
    ("p", 1e-12, 1e12),
];

/// The largest prefix of `base` (`m/s` → `mm/s`, `µm/s`, …) in which `max_abs` is at
/// least 1, so the largest shown value lies in [1, 1000); values of 1 or more, zero and
/// non-finite input keep the base unit, values under 1 p stay in pico.
pub fn si_unit(max_abs: f64, base: &str) -> SiUnit {
    let m = max_abs.abs();
    let (prefix, _, scale) = if m.is_finite() && m > 0.0 {
        PREFIXES
            .into_iter()
            .find(|&(_, size, _)| m >= size)
            .unwrap_or(PREFIXES[PREFIXES.len() - 1])
    } else {
        PREFIXES[0]
    };
    SiUnit {
        label: format!("{prefix}{base}"),
        scale,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_puts_the_maximum_between_1_and_1000() {
        let u = si_unit(0.0021, "m/s");
        assert_eq!(u.label, "mm/s");
        assert!((0.0021 * u.scale - 2.1).abs() < 1e-12);
        assert_eq!(si_unit(-5e-7, "m/s").label, "nm/s");
        assert_eq!(si_unit(1e-6, "m/s").label, "µm/s");
        assert_eq!(si_unit(999e-6, "m/s").label, "µm/s");
        assert_eq!(si_unit(0.001, "m/s").label, "mm/s");
        assert_eq!(si_unit(3.0, "m/s").label, "m/s");
        assert_eq!(si_unit(1e-15, "m/s").label, "pm/s");
    }

    #[test]
    fn zero_and_non_finite_keep_the_base_unit() {
        for m in [0.0, f64::NAN, f64::INFINITY] {
            let u = si_unit(m, "m/s");
            assert_eq!((u.label.as_str(), u.scale), ("m/s", 1.0));
        }
    }
}
