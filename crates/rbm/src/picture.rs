//! Pictures: PNG tilings of a binary RBM's filters, of samples and reconstructions, and
//! training-curve plots. All files are written atomically.
//!
//! Tilings are greyscale: tiles laid out row by row in a near-square grid, separated (and
//! framed) by 1-pixel white lines. An example of `D = rows × cols` values is drawn in row-major
//! order, as MNIST stores its images.

use crate::atomic;
use crate::binary::BinaryRbm;
use crate::error::{RbmError, Result};
use crate::linalg::Matrix;
use std::path::Path;

/// Grey level of the separator lines and of unused grid cells.
pub const SEPARATOR: u8 = 255;

/// Encodes 8-bit pixels (greyscale or RGB) as a PNG and writes it atomically.
fn write_png(
    path: &Path,
    width: usize,
    height: usize,
    color: png::ColorType,
    px: &[u8],
) -> Result<()> {
    let (w, h) = (
        u32::try_from(width).map_err(|_| RbmError::TooLarge(format!("image width {width}")))?,
        u32::try_from(height).map_err(|_| RbmError::TooLarge(format!("image height {height}")))?,
    );
    atomic::write_atomic(path, |out| {
        let mut enc = png::Encoder::new(out, w, h);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(std::io::Error::other)?;
        writer.write_image_data(px).map_err(std::io::Error::other)?;
        writer.finish().map_err(std::io::Error::other)
    })
}

fn check_shape(d: usize, image_shape: (usize, usize)) -> Result<()> {
    let (r, c) = image_shape;
    if r == 0 || c == 0 || r.checked_mul(c) != Some(d) {
        return Err(RbmError::Shape(format!(
            "image shape {r}×{c} does not cover the {d} visible units"
        )));
    }
    Ok(())
}

/// A greyscale canvas of `n` tiles of `shape`, `columns` per row, with separators.
struct Tiling {
    width: usize,
    tile: (usize, usize),
    columns: usize,
    px: Vec<u8>,
}

impl Tiling {
    fn new(n: usize, tile: (usize, usize), columns: usize) -> Tiling {
        let rows = n.div_ceil(columns);
        let width = columns * (tile.1 + 1) + 1;
        let height = rows * (tile.0 + 1) + 1;
        Tiling {
            width,
            tile,
            columns,
            px: vec![SEPARATOR; width * height],
        }
    }

    fn height(&self) -> usize {
        self.px.len() / self.width
    }

    /// Draws tile `k` from row-major grey levels.
    fn put(&mut self, k: usize, grey: impl Fn(usize) -> u8) {
        let (tr, tc) = self.tile;
        let y0 = 1 + (k / self.columns) * (tr + 1);
        let x0 = 1 + (k % self.columns) * (tc + 1);
        for y in 0..tr {
            for x in 0..tc {
                self.px[(y0 + y) * self.width + x0 + x] = grey(y * tc + x);
            }
        }
    }

    fn write(&self, path: &Path) -> Result<()> {
        write_png(
            path,
            self.width,
            self.height(),
            png::ColorType::Grayscale,
            &self.px,
        )
    }
}

/// Columns of a near-square grid for `n` tiles.
fn square_columns(n: usize) -> usize {
    ((n as f64).sqrt().ceil() as usize).max(1)
}

/// Draws the filters of `rbm`, one tile per hidden unit `j` (the column `W[:, j]` reshaped to
/// `image_shape`), each tile scaled from its own minimum (black) to its maximum (white), a
/// constant tile mid-grey. `max_tiles` limits the drawing to the first hidden units.
pub fn filters_png(
    path: &Path,
    rbm: &BinaryRbm,
    image_shape: (usize, usize),
    max_tiles: Option<usize>,
) -> Result<()> {
    let (d, m) = (rbm.visible(), rbm.hidden());
    check_shape(d, image_shape)?;
    if max_tiles == Some(0) {
        return Err(RbmError::param("max_tiles", "must be at least 1"));
    }
    let n = max_tiles.map_or(m, |t| t.min(m));
    let mut t = Tiling::new(n, image_shape, square_columns(n));
    let w = rbm.weights();
    for j in 0..n {
        let (lo, hi) = (0..d)
            .map(|i| w[i * m + j])
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), x| {
                (lo.min(x), hi.max(x))
            });
        let span = hi - lo;
        t.put(j, |i| {
            if span > 0.0 {
                ((w[i * m + j] - lo) / span * 255.0).round() as u8
            } else {
                128
            }
        });
    }
    t.write(path)
}

/// Draws examples (a `D × N` matrix of grey values in [0, 1], one example per column) as a grid
/// of tiles, value 0 black and 1 white, no per-tile rescaling; values outside [0, 1] are clamped.
/// `columns` defaults to a near-square grid.
pub fn grid_png(
    path: &Path,
    examples: &Matrix,
    image_shape: (usize, usize),
    columns: Option<usize>,
) -> Result<()> {
    check_shape(examples.rows(), image_shape)?;
    let n = examples.cols();
    if n == 0 {
        return Err(RbmError::param("examples", "nothing to draw (no columns)"));
    }
    if columns == Some(0) {
        return Err(RbmError::param("columns", "must be at least 1"));
    }
    if examples.as_slice().iter().any(|x| x.is_nan()) {
        return Err(RbmError::param("examples", "contain NaN"));
    }
    let columns = columns.unwrap_or_else(|| square_columns(n)).min(n);
    let mut t = Tiling::new(n, image_shape, columns);
    for j in 0..n {
        let col = examples.col(j);
        t.put(j, |i| (col[i].clamp(0.0, 1.0) * 255.0).round() as u8);
    }
    t.write(path)
}

/// Width of [`curves_png`] plots, the height of the title band, and the height of each panel.
#[cfg(feature = "plots")]
pub const CURVES_SIZE: (u32, u32) = (800, 260);

/// Height of the title band above the panels of [`curves_png`].
#[cfg(feature = "plots")]
pub const CURVES_TITLE_HEIGHT: u32 = 40;

/// Line colours of [`curves_png`], in series order (then repeating).
#[cfg(feature = "plots")]
pub const CURVE_COLORS: [(u8, u8, u8); 6] = [
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (255, 127, 14),
    (148, 103, 189),
    (140, 86, 75),
];

#[cfg(feature = "plots")]
fn register_font() -> Result<()> {
    use std::sync::OnceLock;
    static FONT: OnceLock<bool> = OnceLock::new();
    let ok = *FONT.get_or_init(|| {
        plotters::style::register_font(
            "sans-serif",
            plotters::style::FontStyle::Normal,
            include_bytes!("../assets/DejaVuSans-ascii.ttf"),
        )
        .is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(RbmError::BackendUnavailable("plots"))
    }
}

/// Plots training curves: each series is a name and its `(epoch, value)` points, drawn as a
/// coloured line ([`CURVE_COLORS`]) in a panel of its own (series differ in scale: a
/// reconstruction error of 0.01 would be a flat line beside a free-energy gap of 50), stacked
/// under `title` on an RGB PNG [`CURVES_SIZE`]`.0` wide and [`CURVES_TITLE_HEIGHT`] plus
/// [`CURVES_SIZE`]`.1` per panel high. Non-finite points are skipped; every series needs one
/// finite point. Text uses a bundled subset of DejaVu Sans (printable ASCII), so no system fonts
/// are involved.
#[cfg(feature = "plots")]
pub fn curves_png(path: &Path, series: &[(&str, Vec<(f64, f64)>)], title: &str) -> Result<()> {
    use plotters::prelude::*;
    register_font()?;
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    if series.is_empty() {
        return Err(RbmError::param("series", "no series to plot"));
    }
    let range = |pts: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| {
        let lo = pts.iter().map(f).fold(f64::INFINITY, f64::min);
        let hi = pts.iter().map(f).fold(f64::NEG_INFINITY, f64::max);
        let pad = if hi > lo {
            (hi - lo) * 0.05
        } else {
            lo.abs().max(1.0) * 0.05
        };
        (lo - pad)..(hi + pad)
    };
    let mut panels = Vec::with_capacity(series.len());
    for (name, s) in series {
        let pts: Vec<(f64, f64)> = s.iter().filter(finite).copied().collect();
        if pts.is_empty() {
            return Err(RbmError::param(
                "series",
                format!("`{name}` has no finite points to plot"),
            ));
        }
        panels.push((*name, range(&pts, |p| p.0), range(&pts, |p| p.1), pts));
    }
    let w = CURVES_SIZE.0;
    let h = CURVES_TITLE_HEIGHT + CURVES_SIZE.1 * panels.len() as u32;
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    let draw = |buf: &mut [u8]| -> std::result::Result<(), String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let root = BitMapBackend::with_buffer(buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let body = root.titled(title, ("sans-serif", 22)).map_err(|x| e(&x))?;
        let areas = body.split_evenly((panels.len(), 1));
        for (k, ((name, xr, yr, pts), area)) in panels.iter().zip(&areas).enumerate() {
            let (r, g, b) = CURVE_COLORS[k % CURVE_COLORS.len()];
            let color = RGBColor(r, g, b);
            let mut chart = ChartBuilder::on(area)
                .caption(*name, ("sans-serif", 16))
                .margin(12)
                .x_label_area_size(35)
                .y_label_area_size(70)
                .build_cartesian_2d(xr.clone(), yr.clone())
                .map_err(|x| e(&x))?;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .label_style(("sans-serif", 13))
                .draw()
                .map_err(|x| e(&x))?;
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(|x| e(&x))?;
        }
        root.present().map_err(|x| e(&x))
    };
    draw(&mut buf).map_err(|reason| RbmError::param("series", format!("cannot plot: {reason}")))?;
    write_png(path, w as usize, h as usize, png::ColorType::Rgb, &buf)
}

/// Without the `plots` feature there is no plotting backend.
#[cfg(not(feature = "plots"))]
pub fn curves_png(_path: &Path, _series: &[(&str, Vec<(f64, f64)>)], _title: &str) -> Result<()> {
    Err(RbmError::BackendUnavailable("plots"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("rbm-pic-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Decodes a PNG: (width, height, colour type, pixels).
    fn decode(path: &Path) -> (usize, usize, png::ColorType, Vec<u8>) {
        let f = std::io::BufReader::new(std::fs::File::open(path).unwrap());
        let mut r = png::Decoder::new(f).read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        let info = r.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (
            info.width as usize,
            info.height as usize,
            info.color_type,
            buf,
        )
    }

    #[test]
    fn filter_tiles_are_scaled_to_their_own_range() {
        let dir = tmpdir("filters");
        let p = dir.join("f.png");
        // D = 2×2 pixels, M = 3 hidden units. W row-major D × M.
        // Unit 0: column (−1, 0, 1, 3) → (0, 63.75, 127.5, 255) → 0, 64, 128, 255 (rounded).
        // Unit 1: column (5, 5, 5, 5), constant → mid-grey 128.
        // Unit 2: column (2, −2, 0, 1) → (255, 0, 127.5, 191.25) → 255, 0, 128, 191.
        let w = vec![-1.0, 5.0, 2.0, 0.0, 5.0, -2.0, 1.0, 5.0, 0.0, 3.0, 5.0, 1.0];
        let rbm = BinaryRbm::from_parts(4, 3, w, vec![0.0; 4], vec![0.0; 3]).unwrap();
        filters_png(&p, &rbm, (2, 2), None).unwrap();
        let (wd, ht, ct, px) = decode(&p);
        // 3 tiles → 2 columns × 2 rows of 2×2 tiles with separators: 2·3+1 = 7 square.
        assert_eq!((wd, ht, ct), (7, 7, png::ColorType::Grayscale));
        let at = |x: usize, y: usize| px[y * wd + x];
        // Tile 0 at (1, 1), tile 1 at (4, 1), tile 2 at (1, 4); pixel k at (k % 2, k / 2).
        assert_eq!([at(1, 1), at(2, 1), at(1, 2), at(2, 2)], [0, 64, 128, 255]);
        assert_eq!([at(4, 1), at(5, 1), at(4, 2), at(5, 2)], [128; 4]);
        assert_eq!([at(1, 4), at(2, 4), at(1, 5), at(2, 5)], [255, 0, 128, 191]);
        // Separators, frame and the unused fourth cell are white.
        for k in 0..7 {
            for (x, y) in [(k, 0), (0, k), (3, k), (k, 3), (6, k), (k, 6)] {
                assert_eq!(at(x, y), SEPARATOR);
            }
        }
        assert_eq!([at(4, 4), at(5, 5)], [SEPARATOR; 2]);
        // max_tiles keeps the first units only: one tile, 4×4 px.
        filters_png(&p, &rbm, (2, 2), Some(1)).unwrap();
        let (wd, ht, _, px) = decode(&p);
        assert_eq!((wd, ht), (4, 4));
        assert_eq!([px[5], px[6], px[9], px[10]], [0, 64, 128, 255]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sample_grids_map_unit_interval_to_bytes() {
        let dir = tmpdir("grid");
        let p = dir.join("g.png");
        // Three 1×3 examples in one row of 3 columns.
        let m = Matrix::from_vec(3, 3, vec![0.0, 0.5, 1.0, 0.2, 0.8, 0.0, 1.0, 1.0, -0.5]).unwrap();
        grid_png(&p, &m, (1, 3), Some(3)).unwrap();
        let (wd, ht, _, px) = decode(&p);
        assert_eq!((wd, ht), (13, 3));
        assert_eq!(&px[wd + 1..wd + 4], &[0, 128, 255]);
        assert_eq!(&px[wd + 5..wd + 8], &[51, 204, 0]);
        assert_eq!(&px[wd + 9..wd + 12], &[255, 255, 0]);
        assert!(px[..wd].iter().all(|&g| g == SEPARATOR));
        // The default grid is near-square: 3 tiles → 2 columns × 2 rows of 1×3 tiles.
        grid_png(&p, &m, (1, 3), None).unwrap();
        let (wd, ht, _, _) = decode(&p);
        assert_eq!((wd, ht), (9, 5));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_shapes_are_refused_without_a_file() {
        let dir = tmpdir("bad");
        let p = dir.join("x.png");
        let rbm = BinaryRbm::zeros(6, 2);
        assert!(matches!(
            filters_png(&p, &rbm, (2, 2), None),
            Err(RbmError::Shape(_))
        ));
        assert!(matches!(
            filters_png(&p, &rbm, (0, 6), None),
            Err(RbmError::Shape(_))
        ));
        assert!(matches!(
            filters_png(&p, &rbm, (2, 3), Some(0)),
            Err(RbmError::InvalidParam { .. })
        ));
        let m = Matrix::zeros(6, 2);
        assert!(matches!(
            grid_png(&p, &m, (4, 2), None),
            Err(RbmError::Shape(_))
        ));
        assert!(grid_png(&p, &Matrix::zeros(6, 0), (2, 3), None).is_err());
        assert!(grid_png(&p, &Matrix::from_fn(6, 1, |_, _| f32::NAN), (2, 3), None).is_err());
        assert!(grid_png(&p, &m, (2, 3), Some(0)).is_err());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(feature = "plots")]
    #[test]
    fn curves_draw_lines_legend_and_text() {
        let dir = tmpdir("curves");
        let p = dir.join("c.png");
        let a: Vec<(f64, f64)> = (0..20)
            .map(|e| (e as f64, 100.0 / (1.0 + e as f64)))
            .collect();
        let b: Vec<(f64, f64)> = (0..20).map(|e| (e as f64, 60.0 - e as f64)).collect();
        curves_png(&p, &[("train", a), ("held-out", b)], "free energy").unwrap();
        let (wd, ht, ct, px) = decode(&p);
        assert_eq!(
            (wd as u32, ht as u32, ct),
            (
                CURVES_SIZE.0,
                CURVES_TITLE_HEIGHT + 2 * CURVES_SIZE.1,
                png::ColorType::Rgb
            )
        );
        let count = |c: (u8, u8, u8)| {
            px.chunks_exact(3)
                .filter(|p| (p[0], p[1], p[2]) == c)
                .count()
        };
        // Each line is hundreds of pixels long, 2 px wide, in its own colour and its own panel:
        // the first colour only in the upper panel, the second only in the lower.
        assert!(count(CURVE_COLORS[0]) > 300, "{}", count(CURVE_COLORS[0]));
        assert!(count(CURVE_COLORS[1]) > 300, "{}", count(CURVE_COLORS[1]));
        assert_eq!(count(CURVE_COLORS[2]), 0);
        let split = 3 * wd * (CURVES_TITLE_HEIGHT + CURVES_SIZE.1) as usize;
        let in_part = |part: &[u8], c: (u8, u8, u8)| {
            part.chunks_exact(3)
                .filter(|p| (p[0], p[1], p[2]) == c)
                .count()
        };
        assert_eq!(in_part(&px[split..], CURVE_COLORS[0]), 0);
        assert_eq!(in_part(&px[..split], CURVE_COLORS[1]), 0);
        // The title is rendered: dark pixels in the top band above the plot area.
        let dark_top = (0..40 * wd)
            .filter(|&i| px[3 * i] < 100 && px[3 * i + 1] < 100 && px[3 * i + 2] < 100)
            .count();
        assert!(dark_top > 50, "title pixels: {dark_top}");
        // Nothing finite to plot: refused, no file.
        let q = dir.join("d.png");
        assert!(curves_png(&q, &[("x", vec![(0.0, f64::NAN)])], "t").is_err());
        assert!(curves_png(&q, &[], "t").is_err());
        assert!(!q.exists());
        // A single point and a flat series still plot.
        curves_png(&q, &[("x", vec![(1.0, 2.0)])], "one").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
