//! What the monitor draws, and what its keys do. Pure: state in, frame out, so that
//! ratatui's `TestBackend` can check it.

use ratatui::Frame;
use ratatui::crossterm::event::KeyCode;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Axis, Block, Cell, Chart, Dataset, GraphType, LegendPosition, Paragraph, Row, Table, TableState,
};

use super::runs::{Metric, RunState, Watch};
use super::scale::{axis_label, bounds};

const PALETTE: [Color; 8] = [
    Color::Cyan,
    Color::Yellow,
    Color::Magenta,
    Color::Green,
    Color::LightRed,
    Color::LightBlue,
    Color::White,
    Color::LightGreen,
];

/// The monitor's state.
#[derive(Debug)]
pub struct App {
    /// The runs.
    pub watch: Watch,
    /// The metric the chart shows.
    pub metric: Metric,
    /// The highlighted run (drawn on top and bold in the chart).
    pub selected: usize,
    /// Log scale on the chart's y axis.
    pub log_scale: bool,
    /// Chart the highlighted run only.
    pub only_selected: bool,
    /// A line shown above the help (e.g. "stopping…").
    pub message: Option<String>,
}

/// What a key asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing beyond a redraw.
    None,
    /// Leave (and stop training gracefully, when the monitor owns it).
    Quit,
}

impl App {
    /// A monitor of `watch`, charting the loss on a log scale.
    pub fn new(watch: Watch) -> Self {
        Self { watch, metric: Metric::Loss, selected: 0, log_scale: true, only_selected: false, message: None }
    }

    /// Applies a key.
    pub fn on_key(&mut self, key: KeyCode) -> Action {
        let n = self.watch.runs.len().max(1);
        let at = Metric::ALL.iter().position(|&m| m == self.metric).unwrap_or(0);
        match key {
            KeyCode::Char('q') | KeyCode::Esc => return Action::Quit,
            KeyCode::Char('m') | KeyCode::Tab | KeyCode::Right => {
                self.metric = Metric::ALL[(at + 1) % Metric::ALL.len()]
            }
            KeyCode::Char('M') | KeyCode::BackTab | KeyCode::Left => {
                self.metric = Metric::ALL[(at + Metric::ALL.len() - 1) % Metric::ALL.len()]
            }
            KeyCode::Char(c @ '1'..='9') => self.metric = Metric::ALL[c as usize - '1' as usize],
            KeyCode::Down | KeyCode::Char('j') => self.selected = (self.selected + 1) % n,
            KeyCode::Up | KeyCode::Char('k') => self.selected = (self.selected + n - 1) % n,
            KeyCode::Char('l') => self.log_scale = !self.log_scale,
            KeyCode::Char('a') => self.only_selected = !self.only_selected,
            _ => {}
        }
        Action::None
    }

    /// Draws the whole screen.
    pub fn render(&self, frame: &mut Frame) {
        let rows = self.watch.runs.len() as u16 + 3;
        let [table, chart, help] = Layout::vertical([
            Constraint::Length(rows.min(frame.area().height / 2)),
            Constraint::Min(6),
            Constraint::Length(2),
        ])
        .areas(frame.area());
        self.render_table(frame, table);
        self.render_chart(frame, chart);
        self.render_help(frame, help);
    }

    fn render_table(&self, frame: &mut Frame, area: Rect) {
        let header = Row::new(["run", "switches", "status", "step", "loss", "tok/s", "ETA"]).style(Style::new().bold());
        let rows = self.watch.runs.iter().enumerate().map(|(i, r)| {
            let total = r.total_steps.map(|t| format!("/{t}")).unwrap_or_default();
            let status = match &r.state {
                RunState::Diverged(_) => format!("diverged@{}", r.status_step),
                s => s.word().to_string(),
            };
            let status_style = match r.state {
                RunState::Diverged(_) | RunState::Failed(_) => Style::new().fg(Color::Red),
                RunState::Done => Style::new().fg(Color::Green),
                RunState::Running => Style::new().fg(Color::Yellow),
                _ => Style::new(),
            };
            Row::new([
                Cell::from(r.name.clone()).style(Style::new().fg(PALETTE[i % PALETTE.len()])),
                Cell::from(r.switches.clone()),
                Cell::from(status).style(status_style),
                Cell::from(format!("{}{total}", r.step())),
                Cell::from(r.last(Metric::Loss).map(|l| format!("{l:.4}")).unwrap_or_else(|| "-".into())),
                Cell::from(r.tokens_per_s().map(|t| format!("{t:.0}")).unwrap_or_else(|| "-".into())),
                Cell::from(r.eta_s().map(duration).unwrap_or_else(|| "-".into())),
            ])
        });
        // The name says what varies across the runs: it gets its full length (up to half the
        // width); the switches, which repeat it with what does not vary, get the rest.
        let longest = self.watch.runs.iter().map(|r| r.name.chars().count()).max().unwrap_or(3).max(3) as u16;
        let widths = [
            Constraint::Length(longest.min(area.width / 2)),
            Constraint::Fill(1),
            Constraint::Length(13),
            Constraint::Length(11),
            Constraint::Length(8),
            Constraint::Length(7),
            Constraint::Length(7),
        ];
        let title = format!(" runs in {} ", self.watch.dir.display());
        let table = Table::new(rows, widths)
            .header(header)
            .block(Block::bordered().title(title))
            .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
            .highlight_symbol("▶ ");
        let mut state = TableState::default().with_selected(Some(self.selected));
        frame.render_stateful_widget(table, area, &mut state);
    }

    fn render_chart(&self, frame: &mut Frame, area: Rect) {
        // Log scale plots log10 of the value; log Z, which may be negative, plots |log Z|.
        let signed = self.metric == Metric::LogZ;
        let y = |v: f64| {
            let v = if self.log_scale && signed { v.abs() } else { v };
            if self.log_scale { (v > 0.0).then(|| v.log10()) } else { Some(v) }
        };
        // One series per run, or per source of the highlighted run.
        let names: Vec<String> = match (self.metric, self.watch.runs.get(self.selected)) {
            (Metric::LossBySource, Some(r)) => {
                let mut names: Vec<String> =
                    r.points.iter().flat_map(|p| p.by_source.iter().map(|(n, _)| n.clone())).collect();
                names.sort();
                names.dedup();
                names
            }
            _ => self.watch.runs.iter().map(|r| r.name.clone()).collect(),
        };
        let series: Vec<(usize, Vec<(f64, f64)>)> = if self.metric == Metric::LossBySource {
            let points = self.watch.runs.get(self.selected).map_or(&[][..], |r| &r.points[..]);
            names
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let pts = points
                        .iter()
                        .filter_map(|p| {
                            let v = p.by_source.iter().find(|(n, _)| n == name)?.1;
                            y(v).map(|y| (p.step as f64, y))
                        })
                        .collect();
                    (i, pts)
                })
                .collect()
        } else {
            self.watch
                .runs
                .iter()
                .enumerate()
                .filter(|(i, _)| !self.only_selected || *i == self.selected)
                .map(|(i, r)| {
                    let pts = r
                        .points
                        .iter()
                        .filter_map(|p| {
                            Some(p.value(self.metric)).filter(|v| v.is_finite()).and_then(y).map(|y| (p.step as f64, y))
                        })
                        .collect();
                    (i, pts)
                })
                .collect()
        };
        let series: Vec<(usize, Vec<(f64, f64)>)> = series.into_iter().filter(|(_, pts)| !pts.is_empty()).collect();
        let bold = if self.metric == Metric::LossBySource { usize::MAX } else { self.selected };
        let (mut x_hi, [lo, hi]) = bounds(series.iter().flat_map(|(_, s)| s.iter()));
        for r in &self.watch.runs {
            x_hi = x_hi.max(r.total_steps.unwrap_or(0) as f64);
        }
        // The highlighted run is drawn last, on top, in bold.
        let mut order: Vec<&(usize, Vec<(f64, f64)>)> = series.iter().collect();
        order.sort_by_key(|(i, _)| *i == bold);
        let datasets: Vec<Dataset> = order
            .into_iter()
            .map(|(i, pts)| {
                let mut style = Style::new().fg(PALETTE[i % PALETTE.len()]);
                if *i == bold {
                    style = style.add_modifier(Modifier::BOLD);
                }
                Dataset::default()
                    .name(names[*i].clone())
                    .marker(if *i == bold || bold == usize::MAX { Marker::Braille } else { Marker::Dot })
                    .graph_type(GraphType::Line)
                    .style(style)
                    .data(pts)
            })
            .collect();
        let label = |v: f64| axis_label(if self.log_scale { 10f64.powf(v) } else { v });
        let y_labels = [lo, (lo + hi) / 2.0, hi].map(|v| Span::raw(label(v)));
        let x_labels = [0.0, x_hi / 2.0, x_hi].map(|v| Span::raw(format!("{v:.0}")));
        let scale = if self.log_scale { " (log scale)" } else { "" };
        let what = if self.log_scale && signed { "|log Z| (mean)" } else { self.metric.title() };
        let chart = Chart::new(datasets)
            .block(Block::bordered().title(format!(" {what}{scale} ")))
            .x_axis(Axis::default().title("step").bounds([0.0, x_hi]).labels(x_labels))
            .y_axis(Axis::default().bounds([lo, hi]).labels(y_labels))
            .legend_position(Some(LegendPosition::TopRight))
            .hidden_legend_constraints((Constraint::Ratio(1, 2), Constraint::Ratio(3, 4)));
        frame.render_widget(chart, area);
    }

    fn render_help(&self, frame: &mut Frame, area: Rect) {
        let keys = "q quit · m/M or 1-9 metric · ↑/↓ run · l log scale · a all runs / highlighted only";
        let detail = self.watch.runs.get(self.selected).and_then(|r| match &r.state {
            RunState::Diverged(why) | RunState::Failed(why) => Some(format!("{}: {why}", r.name)),
            _ => None,
        });
        let first = self.message.clone().or(detail).unwrap_or_default();
        let text = vec![Line::from(first.yellow()), Line::from(keys.dim())];
        frame.render_widget(Paragraph::new(text), area);
    }
}

/// `3725` → `1h02m`, `95` → `1m35s`.
fn duration(s: f64) -> String {
    let s = s.round() as u64;
    if s >= 3600 { format!("{}h{:02}m", s / 3600, s % 3600 / 60) } else { format!("{}m{:02}s", s / 60, s % 60) }
}

#[cfg(test)]
mod tests {
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::*;
    use crate::trainer::{METRICS_FILE, STATUS_FILE};

    fn screen(app: &App, w: u16, h: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
        terminal.draw(|f| app.render(f)).unwrap();
        let buffer = terminal.backend().buffer().clone();
        (0..h)
            .map(|y| (0..w).map(|x| buffer[(x, y)].symbol().to_string()).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn grid_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let runs = serde_json::json!({ "runs": [
            { "name": "noqk-lr3e-1", "switches": { "qk_norm": false, "learning_rate": 0.3 } },
            { "name": "qk-lr3e-1", "switches": { "qk_norm": true, "learning_rate": 0.3 } },
            { "name": "qk-lr1e-2", "switches": { "qk_norm": true, "learning_rate": 0.01 } },
        ]});
        std::fs::write(dir.path().join("grid.json"), runs.to_string()).unwrap();
        for (name, logit) in [("noqk-lr3e-1", 1000.0), ("qk-lr3e-1", 10.0)] {
            let run = dir.path().join(name);
            std::fs::create_dir(&run).unwrap();
            let rows: String = (1..=20)
                .map(|s| {
                    format!(
                        "{{\"step\":{s},\"tokens\":{},\"loss\":{},\"max_attn_logit\":{},\"tokens_per_s\":500.0,\"log_z_mean\":-2.0}}\n",
                        s * 100,
                        8.0 - s as f64 * 0.1,
                        logit * s as f64
                    )
                })
                .collect();
            std::fs::write(run.join(METRICS_FILE), rows).unwrap();
        }
        std::fs::write(
            dir.path().join("noqk-lr3e-1").join(STATUS_FILE),
            r#"{"state":"diverged","step":21,"reason":"non-finite loss at step 21"}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("qk-lr3e-1").join(STATUS_FILE), r#"{"state":"running","step":20}"#).unwrap();
        dir
    }

    #[test]
    fn the_table_lists_every_run_with_its_state() {
        let dir = grid_dir();
        let app = App::new(Watch::open(dir.path()).unwrap());
        let text = screen(&app, 140, 36);
        for needle in ["noqk-lr3e-1", "qk-lr1e-2", "diverged@21", "running", "queued", "noqk", "6.0000", "500"] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert!(text.contains("loss (log scale)"), "{text}");
        assert!(text.contains("q quit"), "{text}");
        // The diverged run is highlighted first, so its reason is shown.
        assert!(text.contains("non-finite loss at step 21"), "{text}");
    }

    #[test]
    fn keys_switch_metric_run_and_scale() {
        let dir = grid_dir();
        let mut app = App::new(Watch::open(dir.path()).unwrap());
        app.on_key(KeyCode::Char('2'));
        assert_eq!(app.metric, Metric::MaxAttnLogit);
        let text = screen(&app, 140, 36);
        assert!(text.contains("max attention logit (log scale)"), "{text}");
        // The y axis spans the runs' values, 10 … 20,000, on a log scale (with 5% margins).
        assert!(text.contains("2.92e4") && text.contains("6.84"), "{text}");
        app.on_key(KeyCode::Char('l'));
        assert!(screen(&app, 140, 36).contains(" max attention logit "));
        app.on_key(KeyCode::Char('4'));
        app.on_key(KeyCode::Char('l'));
        assert!(screen(&app, 140, 36).contains("|log Z| (mean) (log scale)"));
        app.on_key(KeyCode::Down);
        app.on_key(KeyCode::Down);
        app.on_key(KeyCode::Down);
        assert_eq!(app.selected, 0, "selection wraps");
        app.on_key(KeyCode::Up);
        assert_eq!(app.selected, 2);
        app.on_key(KeyCode::Char('m'));
        assert_eq!(app.metric, Metric::GradNorm);
        app.on_key(KeyCode::Char('M'));
        app.on_key(KeyCode::Char('M'));
        assert_eq!(app.metric, Metric::OutputRms);
        assert_eq!(app.on_key(KeyCode::Char('q')), Action::Quit);
    }

    #[test]
    fn a_small_or_resized_terminal_still_renders() {
        let dir = grid_dir();
        let app = App::new(Watch::open(dir.path()).unwrap());
        let text = screen(&app, 50, 14);
        assert!(text.contains("runs in"), "{text}");
        // The same terminal, shrunk between two frames: the next draw fits the new size.
        let mut terminal = Terminal::new(TestBackend::new(140, 36)).unwrap();
        terminal.draw(|f| app.render(f)).unwrap();
        terminal.backend_mut().resize(60, 20);
        let frame = terminal.draw(|f| app.render(f)).unwrap();
        assert_eq!((frame.area.width, frame.area.height), (60, 20));
        assert!(terminal.backend().buffer().content.iter().any(|c| c.symbol() == "▶"));
    }

    #[test]
    fn key_7_charts_the_loss_per_source_of_the_highlighted_run() {
        let dir = tempfile::tempdir().unwrap();
        let rows: String = (1..=10)
            .map(|s| {
                let per = serde_json::json!({"visual-chat": 6.0 - 0.3 * s as f64, "safety": 4.0 - 0.35 * s as f64});
                format!("{}\n", serde_json::json!({"step": s, "tokens": s * 100, "loss": 5.0, "ce_by_source": per}))
            })
            .collect();
        std::fs::write(dir.path().join(METRICS_FILE), rows).unwrap();
        let mut app = App::new(Watch::open(dir.path()).unwrap());
        app.on_key(KeyCode::Char('7'));
        assert_eq!(app.metric, Metric::LossBySource);
        let text = screen(&app, 140, 36);
        assert!(text.contains("cross-entropy per source (highlighted run)"), "{text}");
        assert!(text.contains("visual-chat") && text.contains("safety"), "{text}");
        // The top of the y axis is above the largest value of either source (5.7).
        let top: f64 = text.lines().find_map(|l| l.strip_prefix("│")?.split('│').next()?.trim().parse().ok()).unwrap();
        assert!((5.7..8.0).contains(&top), "{top}\n{text}");
        app.on_key(KeyCode::Char('m'));
        assert_eq!(app.metric, Metric::EvalCe);
        app.on_key(KeyCode::Char('m'));
        assert_eq!(app.metric, Metric::AttnEntropy);
        app.on_key(KeyCode::Char('m'));
        assert_eq!(app.metric, Metric::Loss, "m wraps around to the first metric");
    }

    #[test]
    fn key_8_charts_the_held_out_loss_at_the_steps_that_evaluated() {
        let dir = tempfile::tempdir().unwrap();
        let rows: String = (1..=12)
            .map(|s| {
                let mut row = serde_json::json!({"step": s, "tokens": s * 100, "loss": 5.0});
                if s % 4 == 0 {
                    row["eval_ce"] = (9.0 - 0.5 * s as f64).into();
                }
                format!("{row}\n")
            })
            .collect();
        std::fs::write(dir.path().join(METRICS_FILE), rows).unwrap();
        let mut app = App::new(Watch::open(dir.path()).unwrap());
        app.on_key(KeyCode::Char('8'));
        assert_eq!(app.metric, Metric::EvalCe);
        let run = &app.watch.runs[0];
        let evaluated: Vec<usize> =
            run.points.iter().filter(|p| p.value(Metric::EvalCe).is_finite()).map(|p| p.step).collect();
        assert_eq!(evaluated, vec![4, 8, 12]);
        let text = screen(&app, 140, 36);
        assert!(text.contains("held-out cross-entropy"), "{text}");
        // The y axis spans the three evaluations, 3.0 … 7.0 (with margins), not the loss of 5.
        let top: f64 = text.lines().find_map(|l| l.strip_prefix("│")?.split('│').next()?.trim().parse().ok()).unwrap();
        assert!((7.0..8.0).contains(&top), "{top}\n{text}");
    }

    #[test]
    fn key_9_charts_the_attention_entropy() {
        let dir = tempfile::tempdir().unwrap();
        let rows: String = (1..=10)
            .map(|s| {
                let row = serde_json::json!({"step": s, "tokens": s * 100, "loss": 5.0, "min_attn_entropy": 3.0 - 0.25 * s as f64});
                format!("{row}\n")
            })
            .collect();
        std::fs::write(dir.path().join(METRICS_FILE), rows).unwrap();
        let mut app = App::new(Watch::open(dir.path()).unwrap());
        app.on_key(KeyCode::Char('9'));
        assert_eq!(app.metric, Metric::AttnEntropy);
        assert_eq!(app.watch.runs[0].min(Metric::AttnEntropy), Some(0.5));
        let text = screen(&app, 140, 36);
        assert!(text.contains("attention entropy"), "{text}");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(95.0), "1m35s");
        assert_eq!(duration(3725.0), "1h02m");
    }
}
