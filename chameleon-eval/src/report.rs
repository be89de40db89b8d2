//! The ablation report: `report.md` plus one PNG per stability probe, read from a grid's run
//! directories.
//!
//! - Plots: loss, max attention logit, block-output RMS, log Z and grad norm over steps, one
//!   panel per learning rate, one line per variant (the switches other than learning rate and
//!   seed), log scale except log Z.
//! - A table of every run: CE at the end (training and held-out), divergence step, the peaks of
//!   the probes.
//! - LR sensitivity per variant (Wortsman et al. 2023): the mean over the learning-rate sweep of
//!   `min(final CE, initial CE) − best CE`, where best is the lowest final CE of any run; a
//!   diverged run counts as its initial CE. Lower is better: 0 means every learning rate reached
//!   the best loss.
//! - A plain-language verdict on each of the paper's findings, with the numbers behind it
//!   ([`chameleon_train::findings`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use chameleon_train::ablation::Switches;
use chameleon_train::findings::findings;
use chameleon_train::monitor::scale::{axis_label, bounds};
use chameleon_train::monitor::{Metric, RunState, RunView, Watch};
use plotters::prelude::*;

/// A report that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct ReportError {
    /// The file or directory concerned.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

fn err(path: &Path, message: impl ToString) -> ReportError {
    ReportError { path: path.to_path_buf(), message: message.to_string() }
}

/// The metrics plotted, with file names and whether the y axis is logarithmic.
const PLOTS: [(Metric, &str, bool); 5] = [
    (Metric::Loss, "loss", true),
    (Metric::MaxAttnLogit, "max-attn-logit", true),
    (Metric::OutputRms, "output-rms", true),
    (Metric::LogZ, "log-z", false),
    (Metric::GradNorm, "grad-norm", true),
];

const COLORS: [RGBColor; 8] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// A variant: every switch but the learning rate and the seed.
fn variant(s: &Switches) -> String {
    Switches { learning_rate: None, seed: None, ..s.clone() }.describe()
}

fn lr_of(r: &RunView) -> f64 {
    r.switch_values.as_ref().and_then(|s| s.learning_rate).unwrap_or(f64::NAN)
}

/// Writes `report.md` and its PNGs into `out` for the runs under `runs_dir`. Returns the path
/// of `report.md`.
pub fn write_report(runs_dir: &Path, out: &Path) -> Result<PathBuf, ReportError> {
    let watch = Watch::open(runs_dir).map_err(|m| err(runs_dir, m))?;
    let runs: Vec<&RunView> = watch.runs.iter().filter(|r| !r.points.is_empty()).collect();
    if runs.is_empty() {
        return Err(err(runs_dir, "no run has metrics yet"));
    }
    std::fs::create_dir_all(out).map_err(|e| err(out, e))?;
    register_font();

    // Variants in grid order, learning rates ascending.
    let mut variants: Vec<String> = Vec::new();
    for r in &runs {
        let v = r.switch_values.as_ref().map(variant).unwrap_or_else(|| r.name.clone());
        if !variants.contains(&v) {
            variants.push(v);
        }
    }
    let mut lrs: Vec<f64> = runs.iter().map(|r| lr_of(r)).collect();
    lrs.sort_by(f64::total_cmp);
    lrs.dedup();
    let variant_of = |r: &RunView| r.switch_values.as_ref().map(variant).unwrap_or_else(|| r.name.clone());

    let mut md = String::new();
    let _ = writeln!(md, "# Stability ablation report\n");
    let _ = writeln!(
        md,
        "Runs in `{}`: {} runs, {} variants × {} learning rates. Written by `cargo xtask report`.\n",
        runs_dir.display(),
        runs.len(),
        variants.len(),
        lrs.len()
    );

    let _ = writeln!(md, "## The paper's findings, measured\n");
    for f in findings(&watch.runs) {
        let verdict = match f.shown {
            Some(true) => "**shown**",
            Some(false) => "**not shown**",
            None => "not tested by this grid (no pair of runs differs in this switch alone)",
        };
        let _ = writeln!(md, "- {}: {verdict}.", capitalise(f.claim));
        for e in &f.evidence {
            let _ = writeln!(md, "  - {e}");
        }
    }

    let _ = writeln!(md, "\n## Curves\n");
    for (metric, file, log) in PLOTS {
        let path = out.join(format!("{file}.png"));
        plot(&path, metric, log, &runs, &variants, &lrs, &variant_of)?;
        let scale = if log { " (log scale)" } else { "" };
        let _ = writeln!(md, "### {}{scale}\n\n![{}]({file}.png)\n", capitalise(metric.title()), metric.title());
    }

    let _ = writeln!(md, "## Runs\n");
    let _ = writeln!(
        md,
        "| run | switches | status | steps | CE at the end | held-out CE | peak max attention logit | \
         peak block-output RMS | log Z at the end |"
    );
    let _ = writeln!(md, "|---|---|---|---:|---:|---:|---:|---:|---:|");
    for r in &watch.runs {
        let status = match &r.state {
            RunState::Diverged(why) => format!("diverged at step {} ({why})", r.status_step),
            s => s.word().to_string(),
        };
        let _ = writeln!(
            md,
            "| `{}` | {} | {status} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.switches,
            r.step(),
            num(r.final_ce()),
            held_out(r),
            num(r.max(Metric::MaxAttnLogit)),
            num(r.max(Metric::OutputRms)),
            num(r.last(Metric::LogZ)),
        );
    }
    let _ = writeln!(
        md,
        "\nCE at the end: the mean training cross-entropy of the last 10 steps, without the z-loss term. \
         Held-out CE: the run's last evaluation (`eval_ce`, per target) on the fixed held-out set, the same \
         tokens for every run with the same `[data]`, `micro_batch` and `eval_batches`, with its step when \
         that is not the run's last. Peaks are over the run and the max over layers.\n"
    );

    let _ = writeln!(md, "## Learning-rate sensitivity\n");
    let sens = sensitivity(&runs, &variant_of);
    let _ = writeln!(
        md,
        "Wortsman et al. (2023): the mean over a variant's learning rates of `min(CE at the end, initial CE) − \
         best`, where best is the lowest such value over the same variant's sweep. A diverged run counts as its \
         initial CE. Lower is better: 0 means every learning rate did as well as the best one.\n"
    );
    if sens.unfinished > 0 {
        let _ = writeln!(md, "{} run(s) that have not ended are left out.\n", sens.unfinished);
    }
    let _ = writeln!(md, "| variant | learning rates | best CE | sensitivity |");
    let _ = writeln!(md, "|---|---|---:|---:|");
    for v in &variants {
        if let Some((lrs, best, s)) = sens.by_variant.get(v) {
            let lrs: Vec<String> = lrs.iter().map(|l| format!("{l:e}")).collect();
            let _ = writeln!(md, "| {v} | {} | {} | {} |", lrs.join(", "), num(Some(*best)), num(Some(*s)));
        }
    }
    let path = out.join("report.md");
    std::fs::write(&path, md).map_err(|e| err(&path, e))?;
    Ok(path)
}

/// Wortsman et al.'s LR sensitivity of each variant: `(learning rates, best CE, sensitivity)`.
struct Sensitivity {
    by_variant: BTreeMap<String, (Vec<f64>, f64, f64)>,
    /// Runs left out because they have not ended (queued, running, stopped, failed).
    unfinished: usize,
}

/// `E_lr[min(CE(lr), CE_0) − CE*]` with `CE* = min_lr min(CE(lr), CE_0)` over the variant's own
/// sweep. A diverged run counts as its initial CE; several seeds at one learning rate are
/// averaged first.
fn sensitivity(runs: &[&RunView], variant_of: &dyn Fn(&RunView) -> String) -> Sensitivity {
    let mut unfinished = 0;
    let mut by_lr: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for r in runs {
        let initial = r.points.first().map(|p| p.ce).filter(|v| v.is_finite());
        let end = match (&r.state, initial) {
            (RunState::Done, Some(i)) => r.final_ce().unwrap_or(i).min(i),
            (RunState::Diverged(_), Some(i)) => i,
            _ => {
                unfinished += 1;
                continue;
            }
        };
        by_lr.entry(variant_of(r)).or_default().push((lr_of(r), end));
    }
    let by_variant = by_lr
        .into_iter()
        .map(|(v, mut runs)| {
            runs.sort_by(|a, b| a.0.total_cmp(&b.0));
            // Mean over seeds at each learning rate.
            let mut lrs: Vec<f64> = runs.iter().map(|r| r.0).collect();
            lrs.dedup();
            let at: Vec<f64> = lrs
                .iter()
                .map(|&lr| {
                    let here: Vec<f64> = runs.iter().filter(|r| r.0 == lr).map(|r| r.1).collect();
                    here.iter().sum::<f64>() / here.len() as f64
                })
                .collect();
            let best = at.iter().copied().fold(f64::INFINITY, f64::min);
            let sens = at.iter().map(|x| x - best).sum::<f64>() / at.len() as f64;
            (v, (lrs, best, sens))
        })
        .collect();
    Sensitivity { by_variant, unfinished }
}

/// A run's last held-out CE, with its step when the run went on after it (or diverged).
fn held_out(r: &RunView) -> String {
    match r.last_eval() {
        Some((ce, None)) => num(Some(ce)),
        Some((ce, Some(step))) => format!("{} (step {step})", num(Some(ce))),
        None => num(None),
    }
}

fn num(v: Option<f64>) -> String {
    match v {
        Some(v) if v.abs() >= 1e4 => format!("{v:.2e}"),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.3}"),
        None => "-".into(),
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
}

/// plotters draws text with fonts registered by name; DejaVu Sans ships inside the binary.
fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

/// One curve: the variant's index (its colour), its name, and (step, y) points.
type Line = (usize, String, Vec<(f64, f64)>);

/// One PNG: a panel per learning rate, a line per variant.
fn plot(
    path: &Path,
    metric: Metric,
    log: bool,
    runs: &[&RunView],
    variants: &[String],
    lrs: &[f64],
    variant_of: &dyn Fn(&RunView) -> String,
) -> Result<(), ReportError> {
    let (panel_w, h) = (560u32, 420u32);
    let w = panel_w * lrs.len().max(1) as u32;
    let mut buf = vec![255u8; (w * h * 3) as usize];
    let y = |v: f64| if log { (v > 0.0 && v.is_finite()).then(|| v.log10()) } else { v.is_finite().then_some(v) };
    let drawn = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        let panels = root.split_evenly((1, lrs.len().max(1)));
        for (panel, &lr) in panels.iter().zip(lrs) {
            let here: Vec<&&RunView> =
                runs.iter().filter(|r| lr_of(r) == lr || (lr.is_nan() && lr_of(r).is_nan())).collect();
            let series: Vec<Line> = here
                .iter()
                .map(|r| {
                    let v = variant_of(r);
                    let i = variants.iter().position(|x| *x == v).unwrap_or(0);
                    let pts = r.points.iter().filter_map(|p| y(p.value(metric)).map(|y| (p.step as f64, y))).collect();
                    (i, v, pts)
                })
                .collect();
            let (x_hi, [lo, hi]) = bounds(series.iter().flat_map(|(_, _, pts)| pts.iter()));
            let caption =
                if lr.is_nan() { metric.title().to_string() } else { format!("{} — lr {lr:e}", metric.title()) };
            let mut chart = ChartBuilder::on(panel)
                .caption(caption, ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(36)
                .y_label_area_size(64)
                .build_cartesian_2d(0.0..x_hi, lo..hi)?;
            let fmt_y = |v: &f64| axis_label(if log { 10f64.powf(*v) } else { *v });
            let fmt_x = |v: &f64| format!("{v:.0}");
            chart
                .configure_mesh()
                .x_desc("step")
                .x_label_formatter(&fmt_x)
                .y_label_formatter(&fmt_y)
                .label_style(("sans-serif", 13))
                .light_line_style(RGBColor(235, 235, 235))
                .draw()?;
            for (i, name, pts) in series {
                let color = COLORS[i % COLORS.len()];
                chart
                    .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
                    .label(name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .label_font(("sans-serif", 12))
                .position(SeriesLabelPosition::UpperRight)
                .draw()?;
        }
        root.present()?;
        Ok(())
    })();
    drawn.map_err(|e| err(path, format!("cannot draw: {e}")))?;
    let image = image::RgbImage::from_raw(w, h, buf).ok_or_else(|| err(path, "internal: plot buffer size"))?;
    image.save(path).map_err(|e| err(path, e))
}

#[cfg(test)]
mod tests {
    use chameleon_model::NormPlacement;

    use super::*;

    /// A grid directory: `noqk`/`qk` at two learning rates, with made-up but consistent curves.
    fn grid(dir: &Path) {
        let mut index = Vec::new();
        for (qk, lr, logit, ce_end, diverged) in [
            (false, 0.01, 40.0, 6.0, false),
            (false, 0.3, 20000.0, 7.5, true),
            (true, 0.01, 6.0, 5.8, false),
            (true, 0.3, 18.0, 5.5, false),
        ] {
            let s = Switches {
                qk_norm: Some(qk),
                norm_placement: Some(NormPlacement::PreNorm),
                z_loss: Some(0.0),
                learning_rate: Some(lr),
                ..Switches::default()
            };
            let name = format!("{}-lr{lr:e}", if qk { "qk" } else { "noqk" });
            let run = dir.join(&name);
            std::fs::create_dir_all(&run).unwrap();
            let rows: String = (1..=20)
                .map(|s| {
                    let t = s as f64 / 20.0;
                    let ce = 8.0 + (ce_end - 8.0) * t;
                    // Held out every 10 steps, 0.25 above the training CE; non-finite (null) at
                    // the step the diverged run stopped; qk at 1e-2 skips its last evaluation.
                    let eval = match s {
                        20 if diverged => ",\"eval_ce\":null".to_string(),
                        20 if qk && lr == 0.01 => String::new(),
                        10 | 20 => format!(",\"eval_ce\":{}", ce + 0.25),
                        _ => String::new(),
                    };
                    format!(
                        "{{\"step\":{s},\"loss\":{ce},\"ce\":{ce},\"max_attn_logit\":{},\"output_rms\":[1.0,{}],\"log_z_mean\":{},\"grad_norm\":{}{eval}}}\n",
                        logit * t,
                        10.0 * t,
                        7.9 - t,
                        1.0 / s as f64
                    )
                })
                .collect();
            std::fs::write(run.join("metrics.jsonl"), rows).unwrap();
            let status = if diverged {
                r#"{"state":"diverged","step":20,"reason":"non-finite loss at step 20"}"#
            } else {
                r#"{"state":"done","step":20}"#
            };
            std::fs::write(run.join("status.json"), status).unwrap();
            index.push(serde_json::json!({ "name": name, "switches": s }));
        }
        std::fs::write(dir.join("grid.json"), serde_json::json!({ "runs": index }).to_string()).unwrap();
    }

    #[test]
    fn the_report_has_plots_tables_sensitivity_and_verdicts() {
        let dir = tempfile::tempdir().unwrap();
        grid(dir.path());
        let out = dir.path().join("report");
        let md = std::fs::read_to_string(write_report(dir.path(), &out).unwrap()).unwrap();
        for (_, file, _) in PLOTS {
            let png = image::open(out.join(format!("{file}.png"))).unwrap().to_rgb8();
            assert_eq!(png.dimensions(), (1120, 420), "{file}: two learning-rate panels");
            // Lines in the variants' colours were drawn.
            let red = png.pixels().filter(|p| p.0 == [214, 39, 40]).count();
            let blue = png.pixels().filter(|p| p.0 == [31, 119, 180]).count();
            assert!(red > 100 && blue > 100, "{file}: {red} red, {blue} blue pixels");
            assert!(md.contains(&format!("]({file}.png)")));
        }
        assert!(md.contains("QK-norm bounds the attention logits: **shown**"), "{md}");
        assert!(md.contains("diverged at step 20"), "{md}");
        // Held-out CE: the last evaluation, 0.25 above the training CE of its step. qk at lr 3e-1
        // ends at CE 5.5 (step 20); qk at 1e-2 last evaluated at step 10 (CE 6.9); the diverged
        // run's last evaluation was not finite, which is shown, not an earlier one.
        let row = |name: &str| md.lines().find(|l| l.starts_with(&format!("| `{name}`"))).unwrap().to_string();
        assert!(row("qk-lr3e-1").contains("| 5.750 |"), "{}", row("qk-lr3e-1"));
        assert!(row("qk-lr1e-2").contains("| 7.150 (step 10) |"), "{}", row("qk-lr1e-2"));
        assert!(row("noqk-lr3e-1").contains("| NaN |"), "{}", row("noqk-lr3e-1"));
        // CE falls linearly from 8 to its end value; "CE at the end" averages steps 11–20, so it is
        // 8 + (end − 8)·0.775. qk: 6.295 (1e-2) and 6.0625 (3e-1), best 6.0625, gaps 0.2325 and 0.
        // noqk: 6.45 (1e-2) and, diverged, its initial CE 7.975: best 6.45, gaps 0 and 1.525.
        let watch = Watch::open(dir.path()).unwrap();
        let runs: Vec<&RunView> = watch.runs.iter().collect();
        let sens = sensitivity(&runs, &|r: &RunView| variant(r.switch_values.as_ref().unwrap()));
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        let qk = &sens.by_variant["qk pre z0"];
        let noqk = &sens.by_variant["noqk pre z0"];
        assert_eq!(qk.0, [0.01, 0.3]);
        assert!(close(qk.1, 6.0625) && close(noqk.1, 6.45), "best: qk {} noqk {}", qk.1, noqk.1);
        assert!(close(qk.2, 0.11625) && close(noqk.2, 0.7625), "qk {} noqk {}", qk.2, noqk.2);
        assert_eq!(sens.unfinished, 0);
        assert!(md.contains("## Learning-rate sensitivity"));
    }

    #[test]
    fn an_empty_directory_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let e = write_report(dir.path(), &dir.path().join("out")).unwrap_err().to_string();
        assert!(e.contains(&dir.path().display().to_string()) && e.contains("no runs"), "{e}");
    }
}
