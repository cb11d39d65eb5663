//! An RGB picture that field panels are painted into directly (exact colours, fast) and
//! that plotters then draws text, colour bars and charts onto through a small backend
//! with alpha blending and proper text (see [`crate::font`]); PNG encoding.

use fiberflow_data::atomic::write_atomic;
use std::path::Path;

use image::RgbImage;
use plotters::coord::Shift;
use plotters::prelude::{DrawingArea, DrawingAreaErrorKind, IntoDrawingArea};
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendTextStyle, DrawingBackend, DrawingErrorKind, FontStyle,
};

use crate::error::{Result, VizError};
use crate::font::Fonts;

/// The plotters drawing area over a [`Canvas`].
pub(crate) type Area<'c> = DrawingArea<CanvasBackend<'c>, Shift>;

/// The error of plotters drawing calls on an [`Area`].
pub(crate) type DrawError = DrawingAreaErrorKind<std::convert::Infallible>;

/// A white RGB picture of `width` × `height` pixels, row 0 at the top.
pub(crate) struct Canvas {
    image: RgbImage,
}

impl Canvas {
    pub fn new(width: u32, height: u32) -> Self {
        Self {
            image: RgbImage::from_pixel(width, height, image::Rgb([255; 3])),
        }
    }

    /// Sets pixel `(x, y)` (x right, y down); pixels outside the picture are ignored.
    pub fn put(&mut self, x: u32, y: u32, rgb: [u8; 3]) {
        self.blend(x as i64, y as i64, rgb, 1.0);
    }

    /// Mixes `rgb` into pixel `(x, y)` with opacity `alpha`; outside pixels are ignored.
    fn blend(&mut self, x: i64, y: i64, rgb: [u8; 3], alpha: f64) {
        let (width, height) = self.image.dimensions();
        if x < 0 || y < 0 || x >= i64::from(width) || y >= i64::from(height) {
            return;
        }
        let a = alpha.clamp(0.0, 1.0);
        let pixel = self.image.get_pixel_mut(x as u32, y as u32);
        for (old, new) in pixel.0.iter_mut().zip(rgb) {
            *old = (a * f64::from(new) + (1.0 - a) * f64::from(*old)).round() as u8;
        }
    }

    /// Runs plotters drawing code on the whole picture; `what` names it in errors.
    pub fn draw(
        &mut self,
        what: &'static str,
        f: impl FnOnce(&Area) -> std::result::Result<(), DrawError>,
    ) -> Result<()> {
        let fonts = Fonts::get()?;
        let root = CanvasBackend {
            canvas: self,
            fonts,
        }
        .into_drawing_area();
        f(&root).map_err(VizError::draw(what))
    }

    /// The picture so far (for tests that inspect a partly drawn canvas).
    #[cfg(test)]
    pub fn image(&self) -> &RgbImage {
        &self.image
    }

    pub fn into_image(self) -> RgbImage {
        self.image
    }
}

/// plotters' view of a [`Canvas`]: pixels with alpha blending, text through ab_glyph.
pub(crate) struct CanvasBackend<'c> {
    canvas: &'c mut Canvas,
    fonts: &'static Fonts,
}

impl DrawingBackend for CanvasBackend<'_> {
    type ErrorType = std::convert::Infallible;

    fn get_size(&self) -> (u32, u32) {
        self.canvas.image.dimensions()
    }

    fn ensure_prepared(&mut self) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        Ok(())
    }

    fn present(&mut self) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        Ok(())
    }

    fn draw_pixel(
        &mut self,
        (x, y): BackendCoord,
        color: BackendColor,
    ) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        let (r, g, b) = color.rgb;
        self.canvas
            .blend(i64::from(x), i64::from(y), [r, g, b], color.alpha);
        Ok(())
    }

    fn draw_text<S: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        (x0, y0): BackendCoord,
    ) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        let color = style.color();
        let line = self
            .fonts
            .layout(text, style.size(), matches!(style.style(), FontStyle::Bold));
        let (w, h) = line.size();
        let (w, h) = (w as i32, h as i32);
        let anchor = style.anchor();
        let dx = match anchor.h_pos {
            HPos::Left => 0,
            HPos::Center => -w / 2,
            HPos::Right => -w,
        };
        let dy = match anchor.v_pos {
            VPos::Top => 0,
            VPos::Center => -h / 2,
            VPos::Bottom => -h,
        };
        let transform = style.transform();
        let (r, g, b) = color.rgb;
        line.rasterize(|x, y, coverage| {
            let (x, y) = transform.transform(x + dx, y + dy);
            self.canvas.blend(
                i64::from(x0 + x),
                i64::from(y0 + y),
                [r, g, b],
                color.alpha * f64::from(coverage),
            );
        });
        Ok(())
    }

    fn estimate_text_size<S: BackendTextStyle>(
        &self,
        text: &str,
        style: &S,
    ) -> std::result::Result<(u32, u32), DrawingErrorKind<Self::ErrorType>> {
        let bold = matches!(style.style(), FontStyle::Bold);
        Ok(self.fonts.layout(text, style.size(), bold).size())
    }
}

/// Encodes `image` as PNG and writes it atomically to `path`.
pub fn write_png(image: &RgbImage, path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    image
        .write_with_encoder(image::codecs::png::PngEncoder::new(&mut bytes))
        .map_err(VizError::draw("PNG"))?;
    Ok(write_atomic(path, &bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use plotters::prelude::{BLACK, Text};
    use plotters::style::FontTransform;

    /// Bounding box `(width, height)` of the non-white pixels.
    fn ink_box(img: &RgbImage) -> (u32, u32) {
        let ink: Vec<(u32, u32)> = img
            .enumerate_pixels()
            .filter(|(_, _, p)| p.0 != [255, 255, 255])
            .map(|(x, y, _)| (x, y))
            .collect();
        let xs = ink.iter().map(|p| p.0);
        let ys = ink.iter().map(|p| p.1);
        (
            xs.clone().max().unwrap() - xs.min().unwrap() + 1,
            ys.clone().max().unwrap() - ys.min().unwrap() + 1,
        )
    }

    #[test]
    fn text_is_drawn_and_rotated_text_stands_up() {
        let style = crate::font::text(20, BLACK);
        let mut flat = Canvas::new(200, 200);
        flat.draw("t", |a| {
            a.draw(&Text::new("flow rate", (20, 100), style.clone()))
        })
        .unwrap();
        let (w, h) = ink_box(&flat.into_image());
        assert!(w > 3 * h, "{w}×{h}");
        let mut up = Canvas::new(200, 200);
        let turned = style.transform(FontTransform::Rotate270);
        up.draw("t", |a| a.draw(&Text::new("flow rate", (100, 180), turned)))
            .unwrap();
        assert_eq!(ink_box(&up.into_image()), (h, w));
    }
}
