//! Text: DejaVu Sans (Bitstream Vera licence, embedded from the `dejavu` crate) laid out
//! and rasterised with ab_glyph, so figures render identically on headless machines
//! with no system fonts. Layout uses each glyph's advance, side bearing and kerning.

use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, OutlinedGlyph, PxScale, ScaleFont, point};
use plotters::style::{FontStyle, IntoFont, RGBColor, TextStyle};

use crate::error::{Result, VizError};

/// Family name given to plotters; the canvas backend renders every family with DejaVu.
const FAMILY: &str = "sans-serif";

/// The regular and bold faces.
pub(crate) struct Fonts {
    regular: FontRef<'static>,
    bold: FontRef<'static>,
}

impl Fonts {
    /// Parses the embedded faces once per process.
    pub fn get() -> Result<&'static Fonts> {
        static FONTS: OnceLock<Option<Fonts>> = OnceLock::new();
        FONTS
            .get_or_init(|| {
                Some(Fonts {
                    regular: FontRef::try_from_slice(dejavu::sans::regular()).ok()?,
                    bold: FontRef::try_from_slice(dejavu::sans::bold()).ok()?,
                })
            })
            .as_ref()
            .ok_or_else(|| VizError::Draw {
                what: "text",
                reason: "the embedded DejaVu Sans font could not be parsed".to_string(),
            })
    }

    /// Lays out one line of `text` at `size` px (ascent + descent).
    pub fn layout(&self, text: &str, size: f64, bold: bool) -> TextLine {
        let font = if bold { &self.bold } else { &self.regular };
        let scale = PxScale::from(size as f32);
        let scaled = font.as_scaled(scale);
        let mut caret = 0.0f32;
        let mut previous = None;
        let mut glyphs = Vec::with_capacity(text.len());
        for ch in text.chars() {
            let id = scaled.glyph_id(ch);
            if let Some(p) = previous {
                caret += scaled.kern(p, id);
            }
            let glyph = id.with_scale_and_position(scale, point(caret, scaled.ascent()));
            caret += scaled.h_advance(id);
            previous = Some(id);
            glyphs.extend(font.outline_glyph(glyph));
        }
        TextLine {
            glyphs,
            width: caret,
            height: scaled.height(),
        }
    }
}

/// One laid-out line of text, positioned relative to the top-left of its box.
pub(crate) struct TextLine {
    glyphs: Vec<OutlinedGlyph>,
    width: f32,
    height: f32,
}

impl TextLine {
    /// Box size in whole pixels, `(width, height)`.
    pub fn size(&self) -> (u32, u32) {
        (self.width.ceil() as u32, self.height.ceil() as u32)
    }

    /// Calls `f(x, y, coverage)` for every pixel the text covers, relative to the box.
    pub fn rasterize(&self, mut f: impl FnMut(i32, i32, f32)) {
        for g in &self.glyphs {
            let b = g.px_bounds();
            g.draw(|x, y, c| f(b.min.x as i32 + x as i32, b.min.y as i32 + y as i32, c));
        }
    }
}

/// Regular text of `size` pixels in `color`.
pub(crate) fn text(size: u32, color: RGBColor) -> TextStyle<'static> {
    (FAMILY, size).into_font().color(&color)
}

/// Bold text of `size` pixels in `color`.
pub(crate) fn bold(size: u32, color: RGBColor) -> TextStyle<'static> {
    (FAMILY, size)
        .into_font()
        .style(FontStyle::Bold)
        .color(&color)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn width_adds_advances_and_wider_text_is_wider() {
        let fonts = Fonts::get().unwrap();
        let one = fonts.layout("m", 20.0, false);
        let three = fonts.layout("mmm", 20.0, false);
        // "m" has no kerning with itself, so three are exactly three advances.
        assert!((three.width - 3.0 * one.width).abs() < 1e-3);
        assert_eq!(one.size().1, 20, "box height is the pixel size");
        assert!(
            fonts.layout("mmm", 20.0, true).width > three.width,
            "bold is wider"
        );
        assert_eq!(fonts.layout("", 20.0, false).size().0, 0);
    }

    #[test]
    fn glyphs_stay_inside_their_box_and_cover_pixels() {
        let fonts = Fonts::get().unwrap();
        let line = fonts.layout("Hµg|", 16.0, false);
        let (w, h) = line.size();
        let mut covered = 0;
        line.rasterize(|x, y, c| {
            assert!(
                x >= -1 && x <= w as i32 && y >= -1 && y <= h as i32,
                "({x}, {y})"
            );
            if c > 0.5 {
                covered += 1;
            }
        });
        assert!(covered > 20, "{covered}");
    }
}
