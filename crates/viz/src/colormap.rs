//! Colour maps for field panels: perceptually uniform viridis (van der Walt & Smith,
//! matplotlib 2.0; its 256-colour table, B-spline smoothed by `colorous`, within 1/255
//! of matplotlib) for non-negative quantities, and ColorBrewer RdBu (Brewer, 2003)
//! interpolated linearly between its 11 colours as matplotlib does, reversed so negative
//! is blue, for signed velocity components centred at 0 (exactly the neutral #f7f7f7).

/// Colour of NaN and ±Inf pixels: magenta, which neither map nor the outlines use.
pub const NON_FINITE_COLOR: [u8; 3] = [255, 0, 255];

/// Colour of fibre outlines.
pub const OUTLINE_COLOR: [u8; 3] = [0, 0, 0];

/// Which colour map a scale uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColorMap {
    /// Viridis from 0 (dark purple) to the maximum (yellow): magnitudes, errors, std.
    Sequential,
    /// Reversed RdBu from −a (dark blue) through 0 (near white) to +a (dark red).
    Diverging,
}

/// A colour map over a value range: `[0, max]` (sequential) or `[−a, a]` (diverging).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ColorScale {
    map: ColorMap,
    lo: f64,
    hi: f64,
}

impl ColorScale {
    /// Viridis over `[0, max]`; a non-finite or negative `max` counts as 0.
    pub fn sequential(max: f64) -> Self {
        let hi = if max.is_finite() { max.max(0.0) } else { 0.0 };
        Self {
            map: ColorMap::Sequential,
            lo: 0.0,
            hi,
        }
    }

    /// Reversed RdBu over `[−a, a]` with `a = |max_abs|`, so 0 is always the centre.
    pub fn diverging(max_abs: f64) -> Self {
        let a = if max_abs.is_finite() {
            max_abs.abs()
        } else {
            0.0
        };
        Self {
            map: ColorMap::Diverging,
            lo: -a,
            hi: a,
        }
    }

    /// The scale that fits the finite values of `values` with `map`.
    pub fn fitting<'v>(map: ColorMap, values: impl IntoIterator<Item = &'v f32>) -> Self {
        let finite = values.into_iter().filter(|v| v.is_finite());
        match map {
            ColorMap::Sequential => Self::sequential(finite.fold(0.0, |m, &v| m.max(f64::from(v)))),
            ColorMap::Diverging => {
                Self::diverging(finite.fold(0.0, |m, &v| m.max(f64::from(v).abs())))
            }
        }
    }

    /// The map of this scale.
    pub fn map(&self) -> ColorMap {
        self.map
    }

    /// `(lo, hi)` of the scale, in the data's unit.
    pub fn range(&self) -> (f64, f64) {
        (self.lo, self.hi)
    }

    /// Colour of `value`: clamped to the range; NaN and ±Inf get [`NON_FINITE_COLOR`].
    /// A zero-width range shows everything as its lowest (sequential) or centre
    /// (diverging) colour.
    pub fn color(&self, value: f64) -> [u8; 3] {
        if !value.is_finite() {
            return NON_FINITE_COLOR;
        }
        let t = if self.hi > self.lo {
            ((value - self.lo) / (self.hi - self.lo)).clamp(0.0, 1.0)
        } else {
            match self.map {
                ColorMap::Sequential => 0.0,
                ColorMap::Diverging => 0.5,
            }
        };
        let c = match self.map {
            ColorMap::Sequential => colorous::VIRIDIS.eval_continuous(t),
            ColorMap::Diverging => return rdbu(1.0 - t),
        };
        [c.r, c.g, c.b]
    }
}

/// matplotlib's RdBu at `t` in [0, 1]: linear between the 11 ColorBrewer colours (red at
/// 0, blue at 1), so every knot, the ends and the centre included, is exact.
fn rdbu(t: f64) -> [u8; 3] {
    const KNOTS: usize = 11;
    let x = t.clamp(0.0, 1.0) * (KNOTS - 1) as f64;
    let i = (x.floor() as usize).min(KNOTS - 2);
    let f = x - i as f64;
    let (a, b) = (
        colorous::RED_BLUE.eval_rational(i, KNOTS),
        colorous::RED_BLUE.eval_rational(i + 1, KNOTS),
    );
    let mix = |p: u8, q: u8| (f64::from(p) + f * (f64::from(q) - f64::from(p))).round() as u8;
    [mix(a.r, b.r), mix(a.g, b.g), mix(a.b, b.b)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viridis_endpoints_are_matplotlibs() {
        let s = ColorScale::sequential(2.0);
        assert_eq!(s.color(0.0), [0x44, 0x01, 0x54]);
        assert_eq!(s.color(2.0), [0xfd, 0xe7, 0x25]);
        assert_eq!(s.color(7.0), [0xfd, 0xe7, 0x25], "clamped above");
        assert_eq!(s.color(-1.0), [0x44, 0x01, 0x54], "clamped below");
    }

    #[test]
    fn rdbu_is_blue_negative_red_positive_and_centred_at_zero() {
        let s = ColorScale::diverging(-3.0);
        assert_eq!(s.range(), (-3.0, 3.0));
        assert_eq!(s.color(-3.0), [0x05, 0x30, 0x61]);
        assert_eq!(s.color(3.0), [0x67, 0x00, 0x1f]);
        assert_eq!(s.color(0.0), [0xf7, 0xf7, 0xf7]);
        // Half-way between the first two ColorBrewer colours b2182b and 67001f:
        // (178 + 103) / 2 = 140.5 → 141, (24 + 0) / 2 = 12, (43 + 31) / 2 = 37.
        assert_eq!(ColorScale::diverging(10.0).color(9.0), [141, 12, 37]);
    }

    #[test]
    fn non_finite_values_get_the_magenta_and_degenerate_ranges_the_base_colour() {
        let s = ColorScale::sequential(1.0);
        assert_eq!(s.color(f64::NAN), NON_FINITE_COLOR);
        assert_eq!(s.color(f64::NEG_INFINITY), NON_FINITE_COLOR);
        assert_eq!(ColorScale::sequential(0.0).color(0.0), [0x44, 0x01, 0x54]);
        assert_eq!(ColorScale::diverging(0.0).color(0.0), [0xf7, 0xf7, 0xf7]);
        assert_eq!(ColorScale::sequential(f64::NAN).range(), (0.0, 0.0));
    }

    #[test]
    fn fitting_ignores_non_finite_values() {
        let v = [1.0f32, -4.0, f32::NAN, f32::INFINITY, 2.0];
        assert_eq!(
            ColorScale::fitting(ColorMap::Diverging, &v).range(),
            (-4.0, 4.0)
        );
        assert_eq!(
            ColorScale::fitting(ColorMap::Sequential, &v).range(),
            (0.0, 2.0)
        );
    }
}
