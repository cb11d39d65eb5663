//! The comparison figure (`comparison.png`) of one slice: rows truth / prediction /
//! error `|pred − truth|` (and std when given), columns |V|, vx, vy, vz.
//!
//! Truth and prediction share one colour scale per column (viridis from 0 for |V|, RdBu
//! centred at 0 for the signed components), so equal colours mean equal values; error
//! and std panels each get their own viridis scale from 0. Every colour bar picks its SI
//! prefix from its own range (e.g. "mm/s" for vx, "µm/s" for vz). Orientation follows
//! ParaView's view of the matching `.vti`: x right, y up (array row 0 at the bottom).
//! Fibre outlines are black; NaN/±Inf pixels are magenta and counted in the footer.

use std::path::Path;

use fiberflow_geometry::layout::VoxelSize;
use image::RgbImage;
use ndarray::{Array2, ArrayView2, ArrayView4, Zip, s};
use plotters::prelude::{BLACK, Text};

use crate::canvas::{Canvas, write_png};
use crate::colormap::{ColorMap, ColorScale};
use crate::error::{Result, VizError};
use crate::field::{Grid, check_mask, check_shape, check_voxel};
use crate::font::{bold, text};
use crate::panel::{BAR_LABELS_W, BAR_W, draw_colorbar, paint_panel};
use crate::si_unit::{SiUnit, si_unit};

/// Column headings, in column order.
const COLUMNS: [&str; 4] = ["|V|", "vx", "vy", "vz"];

/// Pixel layout of the figure (all sizes in px).
const MARGIN: u32 = 16;
const HEADER_H: u32 = 44;
const FOOTER_H: u32 = 30;
const TITLE_BAND_H: u32 = 24;
const ROW_GAP: u32 = 14;
const COL_GAP: u32 = 18;
const BAR_GAP: u32 = 8;
/// Panels are upscaled by a whole factor until their longer side is at least this.
const MIN_PANEL_SIDE: u32 = 256;

/// What a row of the figure shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Row {
    Truth,
    Prediction,
    Error,
    Std,
}

impl Row {
    fn title(self, col: usize) -> String {
        let c = COLUMNS[col];
        match self {
            Row::Truth => format!("truth  {c}"),
            Row::Prediction => format!("prediction  {c}"),
            Row::Error if col == 0 => "error  |ΔV|".to_string(),
            Row::Error => format!("error  |Δ{c}|"),
            Row::Std if col == 0 => "std  |σ|".to_string(),
            Row::Std => format!("std  σ({c})"),
        }
    }
}

/// A panel ready to paint: its slice plane, scale and display unit.
struct Panel {
    title: String,
    plane: Array2<f32>,
    scale: ColorScale,
    unit: SiUnit,
}

/// Where things go: `k` is the upscale factor of each array pixel.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    k: u32,
    panel_w: u32,
    panel_h: u32,
    rows: u32,
}

impl Layout {
    fn new(grid: Grid, rows: usize) -> Self {
        let side = grid.rows.max(grid.cols) as u32;
        let k = MIN_PANEL_SIDE.div_ceil(side).max(1);
        Self {
            k,
            panel_w: grid.cols as u32 * k,
            panel_h: grid.rows as u32 * k,
            rows: rows as u32,
        }
    }

    fn cell_w(&self) -> u32 {
        self.panel_w + BAR_GAP + BAR_W + BAR_LABELS_W
    }

    fn cell_h(&self) -> u32 {
        TITLE_BAND_H + self.panel_h
    }

    /// Figure width and height.
    pub(crate) fn size(&self) -> (u32, u32) {
        let cols = COLUMNS.len() as u32;
        (
            2 * MARGIN + cols * self.cell_w() + (cols - 1) * COL_GAP,
            HEADER_H + self.rows * self.cell_h() + (self.rows - 1) * ROW_GAP + FOOTER_H,
        )
    }

    /// Top-left pixel of the painted panel in `row`, `col`.
    pub(crate) fn panel_origin(&self, row: usize, col: usize) -> (u32, u32) {
        (
            MARGIN + col as u32 * (self.cell_w() + COL_GAP),
            HEADER_H + row as u32 * (self.cell_h() + ROW_GAP) + TITLE_BAND_H,
        )
    }
}

/// Truth, prediction and optional std of one sample, for comparison figures of any
/// slice. Velocities are `(S, 3, H, W)` in m/s, the mask `(S, 1, H, W)` with 1 = fluid;
/// shapes and the mask are checked as they are added. NaN/Inf velocities are allowed
/// and shown in magenta, so a diverged prediction can still be looked at.
#[derive(Debug)]
pub struct ComparisonFigure<'a> {
    voxel: VoxelSize,
    grid: Grid,
    mask: ArrayView4<'a, f32>,
    prediction: ArrayView4<'a, f32>,
    truth: Option<ArrayView4<'a, f32>>,
    std: Option<ArrayView4<'a, f32>>,
    title: String,
}

impl<'a> ComparisonFigure<'a> {
    /// A figure of `prediction` on the grid of `mask`, with voxel size `voxel` (finite,
    /// positive, m; used for the z position and pixel size in the header).
    pub fn new(
        voxel: VoxelSize,
        mask: ArrayView4<'a, f32>,
        prediction: ArrayView4<'a, f32>,
    ) -> Result<Self> {
        check_voxel(&voxel)?;
        let grid = check_shape("mask", &mask, 1, None)?;
        check_mask("mask", &mask)?;
        check_shape("prediction", &prediction, 3, Some(grid))?;
        Ok(Self {
            voxel,
            grid,
            mask,
            prediction,
            truth: None,
            std: None,
            title: String::new(),
        })
    }

    /// Adds the ground truth: rows become truth / prediction / error.
    pub fn with_truth(mut self, truth: ArrayView4<'a, f32>) -> Result<Self> {
        check_shape("truth", &truth, 3, Some(self.grid))?;
        self.truth = Some(truth);
        Ok(self)
    }

    /// Adds a per-component standard deviation (m/s, not negative) as a last row.
    pub fn with_std(mut self, std: ArrayView4<'a, f32>) -> Result<Self> {
        check_shape("std", &std, 3, Some(self.grid))?;
        if let Some(((s, c, i, j), v)) = std.indexed_iter().find(|(_, v)| **v < 0.0) {
            return Err(VizError::invalid(
                "std",
                format!(
                    "a standard deviation cannot be negative, found {v} at [{s}, {c}, {i}, {j}]"
                ),
            ));
        }
        self.std = Some(std);
        Ok(self)
    }

    /// Sets the heading (e.g. the sample name); the slice and its z follow it.
    pub fn with_title(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    /// Rows: prediction, with truth above and error below it when the truth is given,
    /// and std last when given.
    fn row_count(&self) -> usize {
        1 + 2 * usize::from(self.truth.is_some()) + usize::from(self.std.is_some())
    }

    /// Figure size for this sample, width × height px.
    pub fn size(&self) -> (u32, u32) {
        self.layout().size()
    }

    pub(crate) fn layout(&self) -> Layout {
        Layout::new(self.grid, self.row_count())
    }

    /// Renders `slice` (0-based, < S).
    pub fn render(&self, slice: usize) -> Result<RgbImage> {
        if slice >= self.grid.slices {
            return Err(VizError::invalid(
                "slice",
                format!(
                    "slice {slice} does not exist; the sample has {} slices",
                    self.grid.slices
                ),
            ));
        }
        let panels = self.panels(slice);
        let layout = self.layout();
        let (width, height) = layout.size();
        let mut canvas = Canvas::new(width, height);
        let mask = self.mask.slice(s![slice, 0, .., ..]);
        for (r, row) in panels.iter().enumerate() {
            for (c, p) in row.iter().enumerate() {
                let origin = layout.panel_origin(r, c);
                paint_panel(
                    &mut canvas,
                    origin,
                    layout.k,
                    p.plane.view(),
                    mask,
                    &p.scale,
                );
            }
        }
        let non_finite = panels
            .iter()
            .flatten()
            .map(|p| p.plane.iter().filter(|v| !v.is_finite()).count())
            .sum::<usize>();
        let header = self.header(slice);
        let footer = footer(non_finite);
        canvas.draw("comparison figure", |root| {
            root.draw(&Text::new(header, (MARGIN as i32, 12), bold(20, BLACK)))?;
            root.draw(&Text::new(
                footer,
                (MARGIN as i32, (height - FOOTER_H + 8) as i32),
                text(13, BLACK),
            ))?;
            for (r, row) in panels.iter().enumerate() {
                for (c, p) in row.iter().enumerate() {
                    let (x, y) = layout.panel_origin(r, c);
                    let band = (y - TITLE_BAND_H + 4) as i32;
                    root.draw(&Text::new(
                        p.title.clone(),
                        (x as i32, band),
                        bold(15, BLACK),
                    ))?;
                    let bar_x = x + layout.panel_w + BAR_GAP;
                    root.draw(&Text::new(
                        p.unit.label.clone(),
                        (bar_x as i32, band),
                        text(13, BLACK),
                    ))?;
                    draw_colorbar(root, (bar_x, y), layout.panel_h, &p.scale, &p.unit)?;
                }
            }
            Ok(())
        })?;
        Ok(canvas.into_image())
    }

    /// Renders `slice` and writes it as PNG to `path`, atomically.
    pub fn write_png(&self, slice: usize, path: &Path) -> Result<()> {
        write_png(&self.render(slice)?, path)
    }

    fn header(&self, slice: usize) -> String {
        let z_um = slice as f64 * self.voxel.dz_m * 1e6;
        let dx_um = self.voxel.dx_m * 1e6;
        let place = format!(
            "slice {slice} of {} (0-based, z = {z_um:.1} µm), {}×{} px of {dx_um:.3} µm",
            self.grid.slices, self.grid.cols, self.grid.rows
        );
        if self.title.is_empty() {
            place
        } else {
            format!("{}: {place}", self.title)
        }
    }

    /// The panels of `slice`, row by row, with their colour scales and units.
    fn panels(&self, slice: usize) -> Vec<Vec<Panel>> {
        let planes = |a: ArrayView4<f32>| -> [Array2<f32>; 4] {
            let c = |ch| a.slice(s![slice, ch, .., ..]).to_owned();
            let (x, y, z) = (c(0), c(1), c(2));
            [norm(x.view(), y.view(), z.view()), x, y, z]
        };
        let prediction = planes(self.prediction);
        let truth = self.truth.map(planes);

        // Truth and prediction share one scale per column.
        let shared: Vec<ColorScale> = (0..COLUMNS.len())
            .map(|c| {
                let map = if c == 0 {
                    ColorMap::Sequential
                } else {
                    ColorMap::Diverging
                };
                let values = prediction[c]
                    .iter()
                    .chain(truth.iter().flat_map(|t| t[c].iter()));
                ColorScale::fitting(map, values)
            })
            .collect();

        let mut rows = Vec::with_capacity(self.row_count());
        if let (Some(t), Some(truth)) = (self.truth, truth) {
            let d = |ch| {
                &self.prediction.slice(s![slice, ch, .., ..]) - &t.slice(s![slice, ch, .., ..])
            };
            let (x, y, z) = (d(0), d(1), d(2));
            let error = [
                norm(x.view(), y.view(), z.view()),
                x.mapv(f32::abs),
                y.mapv(f32::abs),
                z.mapv(f32::abs),
            ];
            rows.push((Row::Truth, truth));
            rows.push((Row::Prediction, prediction));
            rows.push((Row::Error, error));
        } else {
            rows.push((Row::Prediction, prediction));
        }
        if let Some(sd) = self.std {
            rows.push((Row::Std, planes(sd)));
        }

        rows.into_iter()
            .map(|(row, planes)| {
                planes
                    .into_iter()
                    .enumerate()
                    .map(|(c, plane)| {
                        let scale = match row {
                            Row::Truth | Row::Prediction => shared[c],
                            Row::Error | Row::Std => {
                                ColorScale::fitting(ColorMap::Sequential, &plane)
                            }
                        };
                        let (lo, hi) = scale.range();
                        Panel {
                            title: row.title(c),
                            plane,
                            unit: si_unit(lo.abs().max(hi.abs()), "m/s"),
                            scale,
                        }
                    })
                    .collect()
            })
            .collect()
    }
}

/// Euclidean norm of three component planes.
fn norm(x: ArrayView2<f32>, y: ArrayView2<f32>, z: ArrayView2<f32>) -> Array2<f32> {
    let mut out = Array2::zeros(x.raw_dim());
    Zip::from(&mut out)
        .and(x)
        .and(y)
        .and(z)
        .for_each(|o, &a, &b, &c| *o = (a * a + b * b + c * c).sqrt());
    out
}

fn footer(non_finite: usize) -> String {
    let mut f = "x → right, y ↑ up (array row 0 at the bottom, as ParaView shows the .vti); black: fibre outlines".to_string();
    if non_finite > 0 {
        f.push_str(&format!(
            "; magenta: NaN/Inf ({non_finite} values over all panels)"
        ));
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::colormap::{NON_FINITE_COLOR, OUTLINE_COLOR};
    use ndarray::Array4;

    const N: usize = 32;
    const VIRIDIS_0: [u8; 3] = [0x44, 0x01, 0x54];
    const VIRIDIS_HALF: [u8; 3] = [0x21, 0x91, 0x8c];
    const VIRIDIS_1: [u8; 3] = [0xfd, 0xe7, 0x25];
    const RDBU_NEG: [u8; 3] = [0x05, 0x30, 0x61];
    const RDBU_ZERO: [u8; 3] = [0xf7, 0xf7, 0xf7];
    const RDBU_POS: [u8; 3] = [0x67, 0x00, 0x1f];

    fn voxel() -> VoxelSize {
        VoxelSize::from_um(0.78, 5.0)
    }

    /// Two slices of N×N fluid with a fibre block over rows 10..20, columns 12..22.
    fn mask() -> Array4<f32> {
        let mut m = Array4::ones((2, 1, N, N));
        m.slice_mut(s![.., .., 10..20, 12..22]).fill(0.0);
        m
    }

    /// vx = row index (0 at row 0), vy = −column index, vz = 0: one-sided and
    /// asymmetric, so a flipped or transposed panel shows.
    fn ramps() -> Array4<f32> {
        Array4::from_shape_fn((2, 3, N, N), |(_, c, i, j)| match c {
            0 => i as f32 * 1e-4,
            1 => -(j as f32) * 1e-4,
            _ => 0.0,
        })
    }

    /// Centre pixel of array element (row `i`, column `j`) in panel (`row`, `col`).
    fn at(fig: &ComparisonFigure, row: usize, col: usize, i: usize, j: usize) -> (u32, u32) {
        let l = fig.layout();
        let (x0, y0) = l.panel_origin(row, col);
        let k = l.k;
        (
            x0 + j as u32 * k + k / 2,
            y0 + (N - 1 - i) as u32 * k + k / 2,
        )
    }

    fn px(img: &RgbImage, (x, y): (u32, u32)) -> [u8; 3] {
        img.get_pixel(x, y).0
    }

    #[test]
    fn size_follows_the_documented_layout() {
        let (m, u) = (mask(), ramps());
        let fig = ComparisonFigure::new(voxel(), m.view(), u.view()).unwrap();
        // 32 px upscaled ×8 = 256; a cell is 256 + 8 + 14 + 64 = 342 wide and 24 + 256
        // tall; width 2·16 + 4·342 + 3·18 = 1454.
        assert_eq!(fig.size(), (1454, 44 + 280 + 30));
        let img = fig.render(1).unwrap();
        assert_eq!(img.dimensions(), (1454, 354));
        let with_truth = ComparisonFigure::new(voxel(), m.view(), u.view())
            .unwrap()
            .with_truth(u.view())
            .unwrap();
        assert_eq!(with_truth.size(), (1454, 44 + 3 * 280 + 2 * 14 + 30));
        let std = u.mapv(f32::abs);
        let all_rows = with_truth.with_std(std.view()).unwrap();
        assert_eq!(all_rows.size(), (1454, 44 + 4 * 280 + 3 * 14 + 30));
        // 16 rows × 32 columns: ×8 gives a 256 × 128 panel.
        let wide_mask = Array4::ones((1, 1, 16, 32));
        let wide_u = Array4::zeros((1, 3, 16, 32));
        let wide = ComparisonFigure::new(voxel(), wide_mask.view(), wide_u.view()).unwrap();
        assert_eq!(wide.size(), (1454, 44 + 24 + 128 + 30));
    }

    #[test]
    fn identical_truth_and_prediction_give_uniform_zero_error_panels() {
        let (m, u) = (mask(), ramps());
        let fig = ComparisonFigure::new(voxel(), m.view(), u.view())
            .unwrap()
            .with_truth(u.view())
            .unwrap();
        let img = fig.render(0).unwrap();
        let l = fig.layout();
        for col in 0..4 {
            let (x0, y0) = l.panel_origin(2, col);
            let mut zero = 0;
            for y in y0..y0 + l.panel_h {
                for x in x0..x0 + l.panel_w {
                    match px(&img, (x, y)) {
                        VIRIDIS_0 => zero += 1,
                        OUTLINE_COLOR => {}
                        other => panic!("error panel {col} has {other:?} at ({x}, {y})"),
                    }
                }
            }
            assert!(zero > 200 * 200, "{zero}");
        }
    }

    #[test]
    fn fibre_outline_pixels_have_the_outline_colour() {
        let (m, u) = (mask(), ramps());
        let fig = ComparisonFigure::new(voxel(), m.view(), u.view()).unwrap();
        let img = fig.render(0).unwrap();
        let l = fig.layout();
        let (x0, y0) = l.panel_origin(0, 1);
        // Fibre row 10 borders fluid row 9, which is drawn below it: the lowest display
        // row of element (10, 15) is outline; the block's centre (15, 17) is not.
        let bottom_edge = (x0 + 15 * l.k + l.k / 2, y0 + (N - 10) as u32 * l.k - 1);
        assert_eq!(px(&img, bottom_edge), OUTLINE_COLOR);
        assert_ne!(px(&img, at(&fig, 0, 1, 15, 17)), OUTLINE_COLOR);
        assert_ne!(px(&img, (bottom_edge.0, bottom_edge.1 + 1)), OUTLINE_COLOR);
    }

    #[test]
    fn colour_map_ends_orientation_and_shared_scales() {
        let (m, truth) = (mask(), ramps());
        let prediction = truth.mapv(|v| 0.5 * v);
        let fig = ComparisonFigure::new(voxel(), m.view(), prediction.view())
            .unwrap()
            .with_truth(truth.view())
            .unwrap();
        let img = fig.render(0).unwrap();
        let top = N - 1;
        // Truth vx = row index: 0 (neutral) at row 0, drawn at the bottom; the maximum
        // (dark red) at the top row.
        assert_eq!(px(&img, at(&fig, 0, 1, 0, 5)), RDBU_ZERO);
        assert_eq!(px(&img, at(&fig, 0, 1, top, 5)), RDBU_POS);
        // Truth vy = −column: neutral at the left, most negative (dark blue) at the right.
        assert_eq!(px(&img, at(&fig, 0, 2, 3, 0)), RDBU_ZERO);
        assert_eq!(px(&img, at(&fig, 0, 2, 3, top)), RDBU_NEG);
        // |V| of the truth peaks at the top-right corner: viridis' yellow end; the
        // prediction is half the truth on the shared scale: viridis' middle.
        assert_eq!(px(&img, at(&fig, 0, 0, top, top)), VIRIDIS_1);
        let half = px(&img, at(&fig, 1, 0, top, top));
        // colorous smooths matplotlib's table with a B-spline: within 1 of #21918c.
        assert!(
            half.iter()
                .zip(VIRIDIS_HALF)
                .all(|(&a, b)| a.abs_diff(b) <= 1),
            "{half:?}"
        );
        assert_eq!(px(&img, at(&fig, 1, 0, 0, 0)), VIRIDIS_0);
        // The error has its own scale: its maximum is yellow again.
        assert_eq!(px(&img, at(&fig, 2, 0, top, top)), VIRIDIS_1);
    }

    #[test]
    fn non_finite_predictions_are_magenta_not_a_failure() {
        let (m, u) = (mask(), ramps());
        let mut prediction = u.clone();
        prediction[[0, 2, 3, 4]] = f32::NAN;
        prediction[[0, 0, 5, 6]] = f32::INFINITY;
        let fig = ComparisonFigure::new(voxel(), m.view(), prediction.view())
            .unwrap()
            .with_truth(u.view())
            .unwrap();
        let img = fig.render(0).unwrap();
        assert_eq!(px(&img, at(&fig, 1, 3, 3, 4)), NON_FINITE_COLOR);
        assert_eq!(px(&img, at(&fig, 2, 3, 3, 4)), NON_FINITE_COLOR);
        assert_eq!(px(&img, at(&fig, 1, 1, 5, 6)), NON_FINITE_COLOR);
        // The infinite value does not stretch the scale: the largest finite vx is still
        // dark red.
        assert_eq!(px(&img, at(&fig, 1, 1, N - 1, 0)), RDBU_POS);
    }

    #[test]
    fn written_png_reads_back_as_rendered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("comparison.png");
        let (m, u) = (mask(), ramps());
        let std = u.mapv(|v| v.abs() * 0.1);
        let fig = ComparisonFigure::new(voxel(), m.view(), u.view())
            .unwrap()
            .with_std(std.view())
            .unwrap()
            .with_title("sample 3");
        fig.write_png(1, &path).unwrap();
        let back = image::open(&path).unwrap().to_rgb8();
        assert_eq!(back, fig.render(1).unwrap());
        let text = back.pixels().filter(|p| p.0 == [0, 0, 0]).count();
        assert!(text > 1000, "titles, ticks and outlines are drawn: {text}");
    }

    #[test]
    fn bad_input_is_refused_with_a_clear_error() {
        let (m, u) = (mask(), ramps());
        let fig = || ComparisonFigure::new(voxel(), m.view(), u.view()).unwrap();
        let err = fig().render(2).unwrap_err();
        assert!(err.to_string().contains("2 slices"), "{err}");
        let short = Array4::<f32>::zeros((2, 2, N, N));
        assert!(matches!(
            ComparisonFigure::new(voxel(), m.view(), short.view()),
            Err(VizError::Shape { .. })
        ));
        let other_grid = Array4::<f32>::zeros((2, 3, N, N - 1));
        assert!(fig().with_truth(other_grid.view()).is_err());
        let negative = u.mapv(|v| v - 1.0);
        assert!(fig().with_std(negative.view()).is_err());
        let fuzzy = m.mapv(|v| v * 0.5);
        assert!(ComparisonFigure::new(voxel(), fuzzy.view(), u.view()).is_err());
        let mut bad_voxel = voxel();
        bad_voxel.dx_m = f64::NAN;
        assert!(ComparisonFigure::new(bad_voxel, m.view(), u.view()).is_err());
        let err = fig()
            .write_png(0, Path::new("/nonexistent-dir/c.png"))
            .unwrap_err();
        assert!(matches!(err, VizError::Io { .. }), "{err}");
    }
}
