use fiberflow_geometry::layout::VoxelSize;
use fiberflow_viz::*;
use ndarray::Array4;
use std::path::Path;
fn main() {
    let n = 256;
    let fibres = [(60.0f32, 80.0f32, 30.0f32), (170.0, 150.0, 40.0), (200.0, 40.0, 25.0)];
    let mask = Array4::from_shape_fn((11, 1, n, n), |(_, _, i, j)| {
        let inside = fibres.iter().any(|&(ci, cj, r)| (i as f32 - ci).hypot(j as f32 - cj) < r);
        if inside { 0.0 } else { 1.0 }
    });
    let u = Array4::from_shape_fn((11, 3, n, n), |(s, c, i, j)| {
        let m = mask[[s, 0, i, j]];
        let (x, y) = (j as f32 / n as f32, i as f32 / n as f32);
        m * match c { 0 => 2e-3 * (1.0 + (6.0 * y).sin()), 1 => 4e-4 * (6.0 * x).cos(), _ => 3e-6 * (x - y) }
    });
    let std = u.mapv(|v| v.abs() * 0.2);
    let fig = ComparisonFigure::new(VoxelSize::from_um(0.195, 5.0), mask.view(), u.view()).unwrap().with_std(std.view()).unwrap().with_title("sample 7");
    fig.write_png(5, Path::new("/tmp/viz_demo/pred_std.png")).unwrap();
    let plot = LinePlot::new("VAE stage 1", "epoch", "loss [-]").log_y(true)
        .with_series(Series::per_epoch("train", &[0.73, 0.4, 0.2, 0.1, 0.05, 0.04, 0.03, 0.025, 0.02, 0.02]).unwrap())
        .with_series(Series::per_epoch("val", &[0.34, 0.2, 0.15, 0.0, 0.1, 0.06, 0.05, 0.04, 0.03, 0.022]).unwrap());
    plot.write_png(Path::new("/tmp/viz_demo/loss.png")).unwrap();
    let t = std::time::Instant::now();
    let mag = magnitude(u.view()).unwrap();
    VtiVolume::new(VoxelSize::from_um(0.195, 5.0), mask.view()).unwrap().with_vector("U_pred", u.view()).unwrap().with_scalar("|U|", mag.view()).unwrap().write(Path::new("/tmp/viz_demo/sample.vti")).unwrap();
    println!("vti {:?}", t.elapsed());
    let t = std::time::Instant::now();
    fig.render(5).unwrap();
    println!("fig {:?}", t.elapsed());
}
