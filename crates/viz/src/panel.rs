//! One field panel of a figure: a slice painted pixel by pixel through a colour scale
//! with fibre outlines from the mask, and its colour bar with ticks and unit.
//!
//! Orientation: x (columns, `j`) to the right and y (rows, `i`) **up**, so array row 0
//! is the bottom pixel row, as ParaView shows a `.vti` slice in its default view.

use ndarray::ArrayView2;
use plotters::prelude::{BLACK, ChartBuilder, LabelAreaPosition, RGBColor, Rectangle};
use plotters::style::Color as _;

use crate::canvas::{Area, Canvas, DrawError};
use crate::colormap::{ColorMap, ColorScale, OUTLINE_COLOR};
use crate::font::text;
use crate::si_unit::SiUnit;

/// Width of the colour bar itself, px.
pub(crate) const BAR_W: u32 = 14;
/// Width reserved right of the bar for tick labels, px.
pub(crate) const BAR_LABELS_W: u32 = 64;

/// Paints `plane` (`(H, W)`) with its top-left corner at `(x0, y0)`, each value as a
/// `k`×`k` block; fibre pixels (`mask == 0`) that touch a fluid pixel on the panel are
/// drawn in [`OUTLINE_COLOR`], so outlines sit on the fibre side of each interface.
pub(crate) fn paint_panel(
    canvas: &mut Canvas,
    (x0, y0): (u32, u32),
    k: u32,
    plane: ArrayView2<f32>,
    mask: ArrayView2<f32>,
    scale: &ColorScale,
) {
    let (h, w) = plane.dim();
    let (ph, pw) = (h as u32 * k, w as u32 * k);
    // Display pixel (px, py) shows array element (row, col); y grows upwards.
    let cell = |px: u32, py: u32| ((ph - 1 - py) / k, px / k);
    let fluid = |(i, j): (u32, u32)| mask[[i as usize, j as usize]] != 0.0;
    for py in 0..ph {
        for px in 0..pw {
            let here = cell(px, py);
            let outline = !fluid(here) && {
                let neighbours = [
                    (px.checked_sub(1), Some(py)),
                    ((px + 1 < pw).then_some(px + 1), Some(py)),
                    (Some(px), py.checked_sub(1)),
                    (Some(px), (py + 1 < ph).then_some(py + 1)),
                ];
                neighbours.into_iter().any(|n| match n {
                    (Some(nx), Some(ny)) => fluid(cell(nx, ny)),
                    _ => false,
                })
            };
            let rgb = if outline {
                OUTLINE_COLOR
            } else {
                scale.color(f64::from(plane[[here.0 as usize, here.1 as usize]]))
            };
            canvas.put(x0 + px, y0 + py, rgb);
        }
    }
}

/// Draws the colour bar of `scale` at `(x, y)`, `height` px tall, ticks labelled in
/// `unit` (values times `unit.scale`).
pub(crate) fn draw_colorbar(
    root: &Area,
    (x, y): (u32, u32),
    height: u32,
    scale: &ColorScale,
    unit: &SiUnit,
) -> Result<(), DrawError> {
    let area = root.clone().shrink((x, y), (BAR_W + BAR_LABELS_W, height));
    let (lo, hi) = scale.range();
    let (mut lo, mut hi) = (lo * unit.scale, hi * unit.scale);
    if hi <= lo {
        // A constant field: label a unit-wide range around it rather than none.
        (lo, hi) = match scale.map() {
            ColorMap::Sequential => (lo, lo + 1.0),
            ColorMap::Diverging => (lo - 1.0, hi + 1.0),
        };
    }
    let mut chart = ChartBuilder::on(&area)
        .right_y_label_area_size(BAR_LABELS_W)
        .build_cartesian_2d(0f64..1f64, lo..hi)?;
    let steps = height.max(1);
    chart.draw_series((0..steps).map(|s| {
        let v0 = lo + (hi - lo) * f64::from(s) / f64::from(steps);
        let v1 = lo + (hi - lo) * f64::from(s + 1) / f64::from(steps);
        let [r, g, b] = scale.color(0.5 * (v0 + v1) / unit.scale);
        Rectangle::new([(0.0, v0), (1.0, v1)], RGBColor(r, g, b).filled())
    }))?;
    chart.draw_series(std::iter::once(Rectangle::new(
        [(0.0, lo), (1.0, hi)],
        BLACK.stroke_width(1),
    )))?;
    chart
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(6)
        .set_tick_mark_size(LabelAreaPosition::Right, 4)
        .y_label_style(text(12, BLACK))
        .y_label_formatter(&|v| tick_label(*v, hi - lo))
        .draw()
}

/// `value` rounded to four digits below the leading digit of `span` (the axis length),
/// without trailing zeros: 2.0 → "2", 2.50 → "2.5", -0.0 → "0".
pub(crate) fn tick_label(value: f64, span: f64) -> String {
    let digits = 4 - span.abs().log10().floor() as i32;
    let decimals = digits.clamp(0, 12) as usize;
    let mut s = format!("{value:.decimals$}");
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    if s == "-0" { "0".to_string() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn pixel(c: &Canvas, x: u32, y: u32) -> [u8; 3] {
        c.image().get_pixel(x, y).0
    }

    #[test]
    fn row_zero_is_painted_at_the_bottom_and_column_zero_at_the_left() {
        // 2 rows × 3 columns, value = 10·row + column, upscaled ×2.
        let plane = Array2::from_shape_fn((2, 3), |(i, j)| (10 * i + j) as f32);
        let mask = Array2::<f32>::ones((2, 3));
        let scale = ColorScale::sequential(12.0);
        let mut c = Canvas::new(6, 4);
        paint_panel(&mut c, (0, 0), 2, plane.view(), mask.view(), &scale);
        // Bottom-left block is element (0, 0); top-right block is element (1, 2).
        assert_eq!(pixel(&c, 0, 3), scale.color(0.0));
        assert_eq!(pixel(&c, 1, 2), scale.color(0.0));
        assert_eq!(pixel(&c, 5, 0), scale.color(12.0));
        assert_eq!(pixel(&c, 2, 0), scale.color(11.0));
        assert_eq!(pixel(&c, 4, 3), scale.color(2.0));
    }

    #[test]
    fn outlines_sit_on_fibre_pixels_next_to_fluid() {
        // A 3×3 fibre block in the middle of a 5×5 fluid plane, unscaled: the fibre's
        // eight border pixels are outline, its centre and all fluid pixels are not.
        let plane = Array2::<f32>::zeros((5, 5));
        let mut mask = Array2::<f32>::ones((5, 5));
        mask.slice_mut(ndarray::s![1..4, 1..4]).fill(0.0);
        let scale = ColorScale::sequential(1.0);
        let mut c = Canvas::new(5, 5);
        paint_panel(&mut c, (0, 0), 1, plane.view(), mask.view(), &scale);
        let outline: usize = (0..5)
            .flat_map(|x| (0..5).map(move |y| (x, y)))
            .filter(|&(x, y)| pixel(&c, x, y) == OUTLINE_COLOR)
            .count();
        assert_eq!(outline, 8);
        assert_eq!(pixel(&c, 1, 1), OUTLINE_COLOR);
        assert_eq!(
            pixel(&c, 2, 2),
            scale.color(0.0),
            "fibre interior shows the data"
        );
        assert_eq!(pixel(&c, 0, 0), scale.color(0.0));
    }

    #[test]
    fn tick_labels_drop_trailing_zeros_but_keep_needed_digits() {
        assert_eq!(tick_label(2.0, 8.0), "2");
        assert_eq!(tick_label(-2.5, 8.0), "-2.5");
        assert_eq!(tick_label(200.0, 800.0), "200");
        assert_eq!(tick_label(0.1 + 0.2, 1.0), "0.3");
        assert_eq!(tick_label(-1e-17, 4.0), "0");
        assert_eq!(tick_label(1500.0, 3000.0), "1500");
    }

    #[test]
    fn nan_pixels_get_the_non_finite_colour() {
        let mut plane = Array2::<f32>::zeros((1, 2));
        plane[[0, 1]] = f32::NAN;
        let mask = Array2::<f32>::ones((1, 2));
        let mut c = Canvas::new(2, 1);
        paint_panel(
            &mut c,
            (0, 0),
            1,
            plane.view(),
            mask.view(),
            &ColorScale::sequential(1.0),
        );
        assert_eq!(pixel(&c, 1, 0), crate::colormap::NON_FINITE_COLOR);
    }
}
