//! throughput.svg: a small hand-written line chart of the pool-size sweep.

use std::fmt::Write as _;

use super::SweepPoint;
use super::machine::Machine;
use crate::args::Args;

/// Chart size and margins.
const W: f64 = 840.0;
const H: f64 = 440.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 240.0;
const TOP: f64 = 60.0;
const BOTTOM: f64 = 70.0;
/// Points stay this far from the plot's left and right edges, clear of the axis labels.
const INSET: f64 = 40.0;
/// Plot width and height.
const PW: f64 = W - LEFT - RIGHT;
const PH: f64 = H - TOP - BOTTOM;

/// A small hand-written line chart: ceiling and agent throughput against total concurrency.
pub fn chart(points: &[SweepPoint], args: &Args, m: &Machine) -> String {
    let mut s = String::new();
    title(&mut s, args, m);
    if points.is_empty() {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">sweep not run (--sweep off)</text></svg>"#,
            W / 2.0,
            H / 2.0
        );
        return s;
    }
    let scale = Scale::new(points);
    axes(&mut s, &scale);
    series(&mut s, points, &scale);
    ratios(&mut s, points, &scale);
    s.push_str("</svg>\n");
    s
}

/// Maps concurrency (log scale) and msg/s onto the plot.
struct Scale {
    /// Total concurrency of each point.
    conc: Vec<f64>,
    lx0: f64,
    lx1: f64,
    ymax: f64,
    step: f64,
}

impl Scale {
    fn new(points: &[SweepPoint]) -> Self {
        let max = points
            .iter()
            .map(|p| p.ceiling.max(p.agent))
            .fold(0.0_f64, f64::max)
            .max(1.0);
        let step = nice_step(max * 1.1 / 5.0);
        let conc: Vec<f64> = points.iter().map(|p| f64::from(p.pool) * 2.0).collect();
        Self {
            lx0: conc.iter().copied().fold(f64::MAX, f64::min).log2(),
            lx1: conc.iter().copied().fold(f64::MIN, f64::max).log2(),
            conc,
            ymax: (max * 1.1 / step).ceil() * step,
            step,
        }
    }

    fn x(&self, c: f64) -> f64 {
        if self.lx1 > self.lx0 {
            LEFT + INSET + (c.log2() - self.lx0) / (self.lx1 - self.lx0) * (PW - 2.0 * INSET)
        } else {
            LEFT + PW / 2.0
        }
    }

    fn y(&self, v: f64) -> f64 {
        TOP + PH - v / self.ymax * PH
    }
}

/// The opening tag, background, title and subtitle.
fn title(s: &mut String, args: &Args, m: &Machine) {
    let (w, h) = (W, H);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15" font-weight="bold">amqp-agent throughput vs concurrency ({} msgs of {} B, trivial PHP handler)</text>"#,
        w / 2.0,
        args.sweep_messages,
        args.body_bytes
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="42" text-anchor="middle" fill="#555">{} × {}, php-fpm pm.static, RabbitMQ {}; {}</text>"##,
        w / 2.0,
        m.cpus,
        xml(&m.cpu_model),
        xml(&m.rabbitmq),
        xml(&m.date)
    );
}

/// Horizontal grid with msg/s labels, the axes, concurrency ticks and the axis titles.
fn axes(s: &mut String, scale: &Scale) {
    let (left, top, pw, ph, h) = (LEFT, TOP, PW, PH, H);
    let mut v = 0.0;
    while v <= scale.ymax + scale.step / 2.0 {
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{yy:.1}" x2="{x2}" y2="{yy:.1}" stroke="#ddd"/><text x="{tx}" y="{ty:.1}" text-anchor="end">{v:.0}</text>"##,
            yy = scale.y(v),
            x2 = left + pw,
            tx = left - 8.0,
            ty = scale.y(v) + 4.0
        );
        v += scale.step;
    }
    let _ = writeln!(
        s,
        r#"<line x1="{left}" y1="{top}" x2="{left}" y2="{b}" stroke="black"/><line x1="{left}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/>"#,
        b = top + ph,
        r = left + pw
    );
    for c in &scale.conc {
        let _ = writeln!(
            s,
            r#"<line x1="{xx:.1}" y1="{b}" x2="{xx:.1}" y2="{b2}" stroke="black"/><text x="{xx:.1}" y="{ty}" text-anchor="middle">{c}</text>"#,
            xx = scale.x(*c),
            b = top + ph,
            b2 = top + ph + 5.0,
            ty = top + ph + 20.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">total concurrency (pool_size per subject × 2 subjects)</text>"#,
        left + pw / 2.0,
        h - 22.0
    );
    let _ = writeln!(
        s,
        r#"<text x="20" y="{}" text-anchor="middle" transform="rotate(-90 20 {})">messages / s</text>"#,
        top + ph / 2.0,
        top + ph / 2.0
    );
}

/// The ceiling and agent lines, their labelled points and legend.
fn series(s: &mut String, points: &[SweepPoint], scale: &Scale) {
    let series = [
        ("ceiling: direct FastCGI", "#1f77b4", true),
        ("amqp-agent backlog drain", "#d62728", false),
    ];
    for (i, (name, color, is_ceiling)) in series.iter().enumerate() {
        let value = |p: &SweepPoint| if *is_ceiling { p.ceiling } else { p.agent };
        let path: Vec<String> = points
            .iter()
            .zip(&scale.conc)
            .map(|(p, c)| format!("{:.1},{:.1}", scale.x(*c), scale.y(value(p))))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2.5" points="{}"/>"#,
            path.join(" ")
        );
        for (p, c) in points.iter().zip(&scale.conc) {
            let (px, py) = (scale.x(*c), scale.y(value(p)));
            let dy = if *is_ceiling { -9.0 } else { 17.0 };
            let _ = writeln!(
                s,
                r#"<circle cx="{px:.1}" cy="{py:.1}" r="4" fill="{color}"/><text x="{px:.1}" y="{:.1}" text-anchor="middle" fill="{color}">{:.0}</text>"#,
                py + dy,
                value(p)
            );
        }
        let ly = TOP + 10.0 + i as f64 * 22.0;
        let lx = LEFT + PW + 20.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2.5"/><text x="{}" y="{}">{name}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0
        );
    }
}

/// agent / ceiling per concurrency, under the legend.
fn ratios(s: &mut String, points: &[SweepPoint], scale: &Scale) {
    let lx = LEFT + PW + 20.0;
    let mut ly = TOP + 70.0;
    let _ = writeln!(
        s,
        r##"<text x="{lx}" y="{ly}" fill="#555">agent / ceiling:</text>"##
    );
    for (p, c) in points.iter().zip(&scale.conc) {
        ly += 18.0;
        let _ = writeln!(
            s,
            r##"<text x="{lx}" y="{ly}" fill="#555">{c}: {:.2}</text>"##,
            p.agent / p.ceiling
        );
    }
}

fn nice_step(raw: f64) -> f64 {
    let magnitude = 10f64.powf(raw.log10().floor());
    let r = raw / magnitude;
    let nice = if r <= 1.0 {
        1.0
    } else if r <= 2.0 {
        2.0
    } else if r <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
