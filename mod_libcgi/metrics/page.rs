//! `SetHandler libcgi-status`: the metrics as an HTML page for people,
//! `?json` for machines (schema "mod_libcgi-status/1", README "Monitoring"),
//! and `?prometheus` (or `Accept: text/plain; version=0.0.4`) in the
//! Prometheus text exposition format.  Read-only: no request changes
//! anything.  Also the mod_libcgi section of mod_status's /server-status.

use super::seg;
use super::segment::{self, FAULT_KINDS, PHASES, P_TOTAL};
use super::snapshot::{self, Hist, Snapshot};
use crate::sys;
use std::ffi::{c_int, CStr};
use std::fmt::Write as _;

pub const HANDLER_NAME: &CStr = c"libcgi-status";
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(PartialEq, Clone, Copy)]
enum Format {
    Html,
    Json,
    Prometheus,
}

/// # Safety
/// Called by Apache with a live request.
pub unsafe extern "C" fn handler(r: *mut sys::request_rec) -> c_int {
    if (*r).handler.is_null() || CStr::from_ptr((*r).handler) != HANDLER_NAME {
        return sys::DECLINED as c_int;
    }
    crate::panic::catch(|| page(r)).unwrap_or_else(|()| {
        crate::panic::in_hook("libcgi-status handler", (*r).server);
        sys::HTTP_INTERNAL_SERVER_ERROR as c_int
    })
}

unsafe fn page(r: *mut sys::request_rec) -> c_int {
    (*r).allowed |= 1 << sys::M_GET;
    if (*r).method_number != sys::M_GET as c_int {
        return sys::HTTP_METHOD_NOT_ALLOWED as c_int;
    }
    let args = if (*r).args.is_null() { "" } else { CStr::from_ptr((*r).args).to_str().unwrap_or("") };
    let accept = sys::apr_table_get((*r).headers_in, c"Accept".as_ptr());
    let accept = if accept.is_null() { "" } else { CStr::from_ptr(accept).to_str().unwrap_or("") };
    let words: Vec<&str> = args.split(['&', ';']).collect();
    let fmt = if words.contains(&"json") {
        Format::Json
    } else if words.contains(&"prometheus") || accept.contains("version=0.0.4") {
        Format::Prometheus
    } else {
        Format::Html
    };
    let Some(s) = seg() else {
        crate::log::rerror(r, sys::APLOG_ERR, 0, "libcgi-status: metrics are off (LibCGIStatusSlots 0)");
        return sys::HTTP_SERVICE_UNAVAILABLE as c_int;
    };
    let snap = snapshot::take(s);
    let (body, ctype) = match fmt {
        Format::Html => (html(&snap), c"text/html; charset=utf-8"),
        Format::Json => (json(&snap), c"application/json"),
        Format::Prometheus => (prometheus(&snap), c"text/plain; version=0.0.4; charset=utf-8"),
    };
    sys::ap_set_content_type(r, ctype.as_ptr());
    sys::apr_table_setn((*r).headers_out, c"Cache-Control".as_ptr(), c"no-store".as_ptr());
    if (*r).header_only == 0 {
        sys::ap_rwrite(body.as_ptr().cast(), body.len() as c_int, r);
    }
    sys::OK as c_int
}

/// mod_status's status_hook: a mod_libcgi section on /server-status.
///
/// # Safety
/// Called by mod_status with a live request.
pub unsafe extern "C" fn status_hook(r: *mut sys::request_rec, flags: c_int) -> c_int {
    crate::panic::catch(|| status_section(r, flags)).unwrap_or_else(|()| {
        crate::panic::in_hook("mod_status section", (*r).server);
        sys::OK as c_int
    })
}

unsafe fn status_section(r: *mut sys::request_rec, flags: c_int) -> c_int {
    let Some(s) = seg() else { return sys::OK as c_int };
    let snap = snapshot::take(s);
    let t = &snap.totals;
    let mut o = String::new();
    if flags & 1 != 0 {
        // AP_STATUS_SHORT (?auto): "Key: value" lines.
        let _ = writeln!(o, "LibCGIRequests: {}", t.c.requests);
        let _ = writeln!(o, "LibCGIInFlight: {}", t.c.in_flight());
        let _ = writeln!(o, "LibCGIFaults: {}", t.c.faults_total());
        let _ = writeln!(o, "LibCGITimeouts: {}", t.c.timeouts);
        let _ = writeln!(o, "LibCGIScripts: {}", snap.slots_used);
    } else {
        let _ = write!(
            o,
            "<hr /><h2>mod_libcgi</h2>\n<p>{} requests ({} in flight), {} faults, {} timeouts, {} scripts. \
             Per script: the <code>libcgi-status</code> handler.</p>\n<table border=\"1\"><tr><th>script</th>\
             <th>requests</th><th>5xx</th><th>faults</th><th>total time</th></tr>\n",
            t.c.requests,
            t.c.in_flight(),
            t.c.faults_total(),
            t.c.timeouts,
            snap.slots_used
        );
        for sc in &snap.scripts {
            let _ = writeln!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc_html(sc.label()),
                sc.c.requests,
                sc.c.class[4],
                sc.c.faults_total(),
                secs(sc.total_ns() as f64 / 1e9)
            );
        }
        o.push_str("</table>\n");
    }
    sys::ap_rwrite(o.as_ptr().cast(), o.len() as c_int, r);
    sys::OK as c_int
}

// ---- escaping --------------------------------------------------------------

pub fn esc_html(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(o, "&#{};", c as u32);
            }
            c => o.push(c),
        }
    }
    o
}

pub fn esc_json(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            // Also < and >, so that the document can be embedded in HTML.
            c if (c as u32) < 0x20 || c == '\u{7f}' || c == '<' || c == '>' || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// A Prometheus label value: backslash, double quote and newline escaped.
pub fn esc_prom(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o
}

fn secs(x: f64) -> String {
    if x >= 1.0 {
        format!("{x:.2} s")
    } else if x >= 1e-3 {
        format!("{:.2} ms", x * 1e3)
    } else {
        format!("{:.1} us", x * 1e6)
    }
}

fn opt_secs(x: Option<f64>) -> String {
    x.map_or("-".into(), secs)
}

fn num(x: f64) -> String {
    // JSON and Prometheus both take this form.
    if x.is_finite() {
        format!("{x:e}")
    } else {
        "0".into()
    }
}

// ---- JSON ------------------------------------------------------------------

fn json_counters(o: &mut String, c: &snapshot::Counters) {
    let _ = write!(
        o,
        "\"requests\":{},\"in_flight\":{},\"responses\":{{\"1xx\":{},\"2xx\":{},\"3xx\":{},\"4xx\":{},\"5xx\":{}}},\
         \"quarantined_503\":{},\"bytes_in\":{},\"bytes_out\":{},\"loads\":{},\"reloads\":{},\"unloads\":{},\
         \"load_failures\":{},\"init_failures\":{},\"faults\":{{",
        c.requests,
        c.in_flight(),
        c.class[0],
        c.class[1],
        c.class[2],
        c.class[3],
        c.class[4],
        c.quarantined,
        c.bytes_in,
        c.bytes_out,
        c.loads,
        c.reloads,
        c.unloads,
        c.load_failures,
        c.init_failures
    );
    for (i, (k, _)) in FAULT_KINDS.iter().enumerate() {
        let _ = write!(o, "{}\"{k}\":{}", if i > 0 { "," } else { "" }, c.faults[i]);
    }
    let _ = write!(
        o,
        "}},\"timeouts\":{},\"exits\":{},\"quarantines\":{},\"recycles\":{}",
        c.timeouts, c.exits, c.quarantines, c.recycles
    );
}

fn json_hist(o: &mut String, h: &Hist) {
    let q = |x: Option<f64>| x.map_or("null".to_string(), num);
    let _ = write!(
        o,
        "{{\"count\":{},\"sum_seconds\":{},\"p50\":{},\"p90\":{},\"p99\":{},\"buckets\":[",
        h.count(),
        num(h.sum_ns as f64 / 1e9),
        q(h.quantile(0.5)),
        q(h.quantile(0.9)),
        q(h.quantile(0.99))
    );
    for (i, b) in h.buckets.iter().enumerate() {
        let _ = write!(o, "{}{b}", if i > 0 { "," } else { "" });
    }
    o.push_str("]}");
}

/// The script's domain (issue 12): where it runs now, how it got there.
fn domain_of(sc: &snapshot::Script) -> crate::isolation::View {
    crate::isolation::view(sc.name.as_bytes(), &sc.dom)
}

/// Requests and seconds per domain: the policy's counts, or all of the
/// script's own in its one fixed domain.
fn split_of(sc: &snapshot::Script, v: &crate::isolation::View) -> [(u64, f64); 2] {
    v.split.unwrap_or([(sc.c.requests, sc.total_ns() as f64 / 1e9), (0, 0.0)])
}

fn json_domain(o: &mut String, sc: &snapshot::Script) {
    let v = domain_of(sc);
    let [(ir, is), (pr, ps)] = split_of(sc, &v);
    let _ = write!(
        o,
        "\"isolation\":\"{}\",\"domain\":\"{}\",\"transitions\":{{\"promote\":{},\"demote\":{}}},\"cooling_down\":{},\
         \"domains\":{{\"inprocess\":{{\"requests\":{ir},\"seconds\":{}}},\"process\":{{\"requests\":{pr},\"seconds\":{}}}}},",
        v.mode,
        v.domain,
        v.promote,
        v.demote,
        v.cooling,
        num(is),
        num(ps)
    );
}

fn json_script(o: &mut String, sc: &snapshot::Script) {
    let _ = write!(o, "{{\"script\":{},\"other\":{},", esc_json(sc.label()), sc.other);
    if !sc.other && !sc.name.is_empty() && sc.name != "(all)" {
        json_domain(o, sc);
    }
    json_counters(o, &sc.c);
    match sc.last_fault {
        Some((t, sig, pid, addr)) => {
            let _ = write!(
                o,
                ",\"last_fault\":{{\"time\":{},\"signal\":{sig},\"pid\":{pid},\"address\":{}}}",
                num(t as f64 / 1e6),
                if addr != u64::MAX { format!("\"{addr:#x}\"") } else { "null".into() }
            );
        }
        None => o.push_str(",\"last_fault\":null"),
    }
    o.push_str(",\"latency\":{");
    for (p, name) in PHASES.iter().enumerate() {
        let _ = write!(o, "{}\"{name}\":", if p > 0 { "," } else { "" });
        json_hist(o, &sc.h[p]);
    }
    o.push_str("}}");
}

pub fn json(s: &Snapshot) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "{{\"schema\":\"mod_libcgi-status/1\",\"server\":{{\"pid\":{},\"since\":{},\"now\":{},\"slots\":{},\
         \"slots_used\":{},\"slots_refused\":{},\"segment_bytes\":{},\"row_bytes\":{},\"server_limit\":{},\
         \"thread_limit\":{}}},\"phases\":[",
        // SAFETY: getpid has no preconditions.
        unsafe { libc::getpid() },
        num(s.since_us as f64 / 1e6),
        num(s.now_us as f64 / 1e6),
        s.slots,
        s.slots_used,
        s.names_full,
        s.bytes,
        s.row_bytes,
        s.servers,
        s.threads
    );
    for (i, p) in PHASES.iter().enumerate() {
        let _ = write!(o, "{}\"{p}\"", if i > 0 { "," } else { "" });
    }
    o.push_str("],\"bucket_bounds_seconds\":[");
    for (i, b) in segment::BOUNDS_NS.iter().enumerate() {
        let _ = write!(o, "{}{}", if i > 0 { "," } else { "" }, num(*b as f64 / 1e9));
    }
    o.push(']');
    if let Some((budget, over, evals, cpu)) = crate::isolation::policy_view() {
        let _ = write!(
            o,
            ",\"adaptive\":{{\"budget_percent\":{},\"overhead_percent\":{},\"evaluations\":{evals},\
             \"evaluator_cpu_seconds\":{}}}",
            num(budget),
            num(over),
            num(cpu)
        );
    }
    o.push_str(",\"totals\":");
    json_script(&mut o, &s.totals);
    o.push_str(",\"scripts\":[");
    for (i, sc) in s.scripts.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        json_script(&mut o, sc);
    }
    o.push_str("],\"processes\":[");
    for (i, p) in s.procs.iter().enumerate() {
        let _ = write!(o, "{}{{\"slot\":{},\"pid\":{},", if i > 0 { "," } else { "" }, p.slot, p.pid);
        json_counters(&mut o, &p.c);
        o.push('}');
    }
    o.push_str("]}\n");
    o
}

// ---- Prometheus ------------------------------------------------------------

pub fn prometheus(s: &Snapshot) -> String {
    let mut o = String::new();
    let family =
        |o: &mut String, name: &str, kind: &str, help: &str, f: &dyn Fn(&mut String, &snapshot::Script, &str)| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for sc in &s.scripts {
                let label = esc_prom(sc.label());
                f(o, sc, &label);
            }
        };
    macro_rules! simple {
        ($name:expr, $kind:expr, $help:expr, $val:expr) => {
            family(&mut o, $name, $kind, $help, &|o, sc, l| {
                let _ = writeln!(o, "{}{{script=\"{l}\"}} {}", $name, $val(sc));
            });
        };
    }
    simple!("libcgi_requests_total", "counter", "Requests handled, by script.", |sc: &snapshot::Script| sc.c.requests);
    family(&mut o, "libcgi_responses_total", "counter", "Responses by status class.", &|o, sc, l| {
        for (k, c) in CLASSES.iter().enumerate() {
            let _ = writeln!(o, "libcgi_responses_total{{script=\"{l}\",class=\"{c}\"}} {}", sc.c.class[k]);
        }
    });
    simple!(
        "libcgi_quarantined_responses_total",
        "counter",
        "503 responses while the script was quarantined.",
        |sc: &snapshot::Script| sc.c.quarantined
    );
    simple!("libcgi_requests_in_flight", "gauge", "Requests running now.", |sc: &snapshot::Script| sc.c.in_flight());
    simple!("libcgi_request_body_bytes_total", "counter", "Bytes of request body read.", |sc: &snapshot::Script| sc
        .c
        .bytes_in);
    simple!("libcgi_response_body_bytes_total", "counter", "Bytes of response body sent.", |sc: &snapshot::Script| sc
        .c
        .bytes_out);
    simple!("libcgi_loads_total", "counter", "Successful loads (initfunc done).", |sc: &snapshot::Script| sc.c.loads);
    simple!("libcgi_reloads_total", "counter", "Loads because the file was replaced.", |sc: &snapshot::Script| sc
        .c
        .reloads);
    simple!("libcgi_unloads_total", "counter", "Unloads (after a fault, at exit).", |sc: &snapshot::Script| sc
        .c
        .unloads);
    simple!("libcgi_load_failures_total", "counter", "Failed loads.", |sc: &snapshot::Script| sc.c.load_failures);
    simple!("libcgi_initfunc_failures_total", "counter", "Loads whose initfunc failed.", |sc: &snapshot::Script| sc
        .c
        .init_failures);
    family(&mut o, "libcgi_faults_total", "counter", "Faults of processfunc by signal.", &|o, sc, l| {
        for (k, (kind, _)) in FAULT_KINDS.iter().enumerate() {
            let _ = writeln!(o, "libcgi_faults_total{{script=\"{l}\",kind=\"{kind}\"}} {}", sc.c.faults[k]);
        }
    });
    simple!("libcgi_timeouts_total", "counter", "processfunc calls cut at LibCGITimeout.", |sc: &snapshot::Script| sc
        .c
        .timeouts);
    simple!("libcgi_exits_total", "counter", "exit() calls from processfunc.", |sc: &snapshot::Script| sc.c.exits);
    simple!("libcgi_quarantines_total", "counter", "Times the script was quarantined.", |sc: &snapshot::Script| sc
        .c
        .quarantines);
    simple!("libcgi_recycles_total", "counter", "Process recycles after its faults.", |sc: &snapshot::Script| sc
        .c
        .recycles);
    let named = |sc: &snapshot::Script| !sc.other && !sc.name.is_empty();
    family(&mut o, "libcgi_isolated", "gauge", "1 while the script runs in isolated workers.", &|o, sc, l| {
        if named(sc) {
            let _ = writeln!(o, "libcgi_isolated{{script=\"{l}\"}} {}", u8::from(domain_of(sc).domain == "process"));
        }
    });
    family(
        &mut o,
        "libcgi_transitions_total",
        "counter",
        "Domain changes of the adaptive policy (promote: into the server processes).",
        &|o, sc, l| {
            if named(sc) {
                let v = domain_of(sc);
                let _ = writeln!(o, "libcgi_transitions_total{{script=\"{l}\",direction=\"promote\"}} {}", v.promote);
                let _ = writeln!(o, "libcgi_transitions_total{{script=\"{l}\",direction=\"demote\"}} {}", v.demote);
            }
        },
    );
    family(&mut o, "libcgi_domain_requests_total", "counter", "Requests by the domain they ran in.", &|o, sc, l| {
        if named(sc) {
            let v = domain_of(sc);
            let [(ir, _), (pr, _)] = split_of(sc, &v);
            let _ = writeln!(o, "libcgi_domain_requests_total{{script=\"{l}\",domain=\"inprocess\"}} {ir}");
            let _ = writeln!(o, "libcgi_domain_requests_total{{script=\"{l}\",domain=\"process\"}} {pr}");
        }
    });
    family(
        &mut o,
        "libcgi_last_fault_timestamp_seconds",
        "gauge",
        "Unix time of the script's last fault (0: none).",
        &|o, sc, l| {
            let t = sc.last_fault.map_or(0.0, |f| f.0 as f64 / 1e6);
            let _ = writeln!(o, "libcgi_last_fault_timestamp_seconds{{script=\"{l}\"}} {}", num(t));
        },
    );
    family(
        &mut o,
        "libcgi_request_duration_seconds",
        "histogram",
        "Time of a request in the module, whole (phase total) and by phase.",
        &|o, sc, l| {
            for (p, phase) in PHASES.iter().enumerate() {
                let h = &sc.h[p];
                let mut cum = 0;
                for (i, b) in segment::BOUNDS_NS.iter().enumerate() {
                    cum += h.buckets[i];
                    let _ = writeln!(
                        o,
                        "libcgi_request_duration_seconds_bucket{{script=\"{l}\",phase=\"{phase}\",le=\"{}\"}} {cum}",
                        num(*b as f64 / 1e9)
                    );
                }
                cum += h.buckets[segment::NB - 1];
                let _ = writeln!(
                    o,
                    "libcgi_request_duration_seconds_bucket{{script=\"{l}\",phase=\"{phase}\",le=\"+Inf\"}} {cum}"
                );
                let _ = writeln!(
                    o,
                    "libcgi_request_duration_seconds_sum{{script=\"{l}\",phase=\"{phase}\"}} {}",
                    num(h.sum_ns as f64 / 1e9)
                );
                let _ = writeln!(o, "libcgi_request_duration_seconds_count{{script=\"{l}\",phase=\"{phase}\"}} {cum}");
            }
        },
    );
    let _ = writeln!(
        o,
        "# HELP libcgi_script_slots Rows of the script table (LibCGIStatusSlots).\n# TYPE libcgi_script_slots gauge\n\
         libcgi_script_slots {}\n# HELP libcgi_script_slots_used Rows in use.\n# TYPE libcgi_script_slots_used gauge\n\
         libcgi_script_slots_used {}\n# HELP libcgi_script_slots_refused_total Scripts counted in the other row because \
         the table was full.\n# TYPE libcgi_script_slots_refused_total counter\nlibcgi_script_slots_refused_total {}\n\
         # HELP libcgi_counters_reset_timestamp_seconds Unix time the counters started (last full restart).\n\
         # TYPE libcgi_counters_reset_timestamp_seconds gauge\nlibcgi_counters_reset_timestamp_seconds {}",
        s.slots,
        s.slots_used,
        s.names_full,
        num(s.since_us as f64 / 1e6)
    );
    let _ = writeln!(
        o,
        "# HELP libcgi_process_requests_total Requests by server process slot.\n# TYPE libcgi_process_requests_total counter"
    );
    for p in &s.procs {
        let _ = writeln!(o, "libcgi_process_requests_total{{slot=\"{}\",pid=\"{}\"}} {}", p.slot, p.pid, p.c.requests);
    }
    o
}

// ---- HTML ------------------------------------------------------------------

const COLORS: [&str; 4] = ["#8e6c8a", "#4c78a8", "#f58518", "#54a24b"];

/// The share of the time per phase (load, script, callbacks, output) as one
/// stacked bar.
fn share_bar(sc: &snapshot::Script) -> String {
    let total = sc.h[P_TOTAL].sum_ns.max(1) as f64;
    let mut o = String::from("<svg width=\"200\" height=\"14\" role=\"img\"><title>");
    let mut x = 0.0;
    let mut rects = String::new();
    for p in 0..4 {
        let share = sc.h[p].sum_ns as f64 / total;
        let _ = write!(o, "{} {:.1}% ", PHASES[p], share * 100.0);
        let w = share * 200.0;
        let _ = write!(rects, "<rect x=\"{x:.2}\" y=\"0\" width=\"{w:.2}\" height=\"14\" fill=\"{}\"/>", COLORS[p]);
        x += w;
    }
    o.push_str("</title>");
    o.push_str(&rects);
    o.push_str("</svg>");
    o
}

fn html_row(o: &mut String, sc: &snapshot::Script, bold: bool) {
    let (b0, b1) = if bold { ("<b>", "</b>") } else { ("", "") };
    let c = &sc.c;
    let h = &sc.h[P_TOTAL];
    let dom = if bold || sc.other {
        String::new()
    } else {
        let v = domain_of(sc);
        let [(ir, _), (pr, _)] = split_of(sc, &v);
        format!(
            "{} ({}{}; +{} -{}; {ir} in process, {pr} isolated)",
            v.domain,
            v.mode,
            if v.cooling { ", cooling down" } else { "" },
            v.promote,
            v.demote
        )
    };
    let _ = writeln!(
        o,
        "<tr><td class=\"name\">{b0}{}{b1}</td><td>{dom}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
         <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        esc_html(sc.label()),
        c.requests,
        c.in_flight(),
        c.class[1],
        c.class[2],
        c.class[3],
        c.class[4],
        c.quarantined,
        c.faults_total(),
        c.timeouts,
        c.loads,
        c.load_failures,
        opt_secs(h.quantile(0.5)),
        opt_secs(h.quantile(0.9)),
        opt_secs(h.quantile(0.99)),
        secs(h.sum_ns as f64 / 1e9),
        share_bar(sc)
    );
}

pub fn html(s: &Snapshot) -> String {
    let mut o = String::new();
    let up = (s.now_us.saturating_sub(s.since_us)) as f64 / 1e6;
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>mod_libcgi status</title>\n<style>\
         body{{font-family:sans-serif;font-size:13px}} table{{border-collapse:collapse;margin-bottom:1.5em}} \
         td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}} td.name{{text-align:left;font-family:monospace}} \
         th{{background:#eee}} .key span{{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px}}</style>\
         </head><body>\n<h1>mod_libcgi status</h1>\n<p>Counting for {up:.0} s (since the last full restart), \
         pid {}; {} of {} script rows used{}; segment {} bytes ({} per row).</p>\n",
        // SAFETY: getpid has no preconditions.
        unsafe { libc::getpid() },
        s.slots_used,
        s.slots,
        if s.names_full > 0 { format!(", {} scripts counted as other (table full)", s.names_full) } else { "".into() },
        s.bytes,
        s.row_bytes
    );
    o.push_str("<p class=\"key\">Share of time:");
    for p in 0..4 {
        let _ = write!(o, "<span style=\"background:{}\"></span>{}", COLORS[p], PHASES[p]);
    }
    o.push_str("</p>\n<h2>Scripts (by total time)</h2>\n<table><tr><th>script</th><th>domain</th><th>requests</th><th>in flight</th>\
         <th>2xx</th><th>3xx</th><th>4xx</th><th>5xx</th><th>503 quarantine</th><th>faults</th><th>timeouts</th>\
         <th>loads</th><th>failed loads</th><th>p50</th><th>p90</th><th>p99</th><th>total time</th><th>phases</th></tr>\n");
    html_row(&mut o, &s.totals, true);
    for sc in &s.scripts {
        html_row(&mut o, sc, false);
    }
    o.push_str(
        "</table>\n<h2>Phases</h2>\n<table><tr><th>script</th><th>phase</th><th>count</th><th>p50</th>\
                <th>p90</th><th>p99</th><th>time</th><th>share</th></tr>\n",
    );
    for sc in &s.scripts {
        if sc.c.requests == 0 {
            continue;
        }
        let total = sc.h[P_TOTAL].sum_ns.max(1) as f64;
        for (p, phase) in PHASES.iter().enumerate() {
            let h = &sc.h[p];
            let _ = writeln!(
                o,
                "<tr><td class=\"name\">{}</td><td>{phase}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{:.1}%</td></tr>",
                esc_html(sc.label()),
                h.count(),
                opt_secs(h.quantile(0.5)),
                opt_secs(h.quantile(0.9)),
                opt_secs(h.quantile(0.99)),
                secs(h.sum_ns as f64 / 1e9),
                h.sum_ns as f64 * 100.0 / total
            );
        }
    }
    o.push_str("</table>\n<h2>Faults</h2>\n<table><tr><th>script</th>");
    for (k, _) in FAULT_KINDS {
        let _ = write!(o, "<th>{k}</th>");
    }
    o.push_str("<th>timeouts</th><th>exit()</th><th>quarantines</th><th>recycles</th><th>last fault</th></tr>\n");
    for sc in &s.scripts {
        let _ = write!(o, "<tr><td class=\"name\">{}</td>", esc_html(sc.label()));
        for v in sc.c.faults {
            let _ = write!(o, "<td>{v}</td>");
        }
        let last = sc.last_fault.map_or("-".to_string(), |(t, sig, pid, addr)| {
            let at = if addr != u64::MAX { format!(" at {addr:#x}") } else { String::new() };
            format!("signal {sig}{at} in pid {pid}, {:.0} s ago", (s.now_us.saturating_sub(t)) as f64 / 1e6)
        });
        let _ = writeln!(
            o,
            "<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{last}</td></tr>",
            sc.c.timeouts, sc.c.exits, sc.c.quarantines, sc.c.recycles
        );
    }
    o.push_str("</table>\n<h2>Server processes</h2>\n<table><tr><th>slot</th><th>pid</th><th>requests</th>\
                <th>in flight</th><th>loads</th><th>unloads</th><th>faults</th><th>timeouts</th><th>recycles</th></tr>\n");
    for p in &s.procs {
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            p.slot,
            if p.pid > 0 { p.pid.to_string() } else { "-".into() },
            p.c.requests,
            p.c.in_flight(),
            p.c.loads,
            p.c.unloads,
            p.c.faults_total(),
            p.c.timeouts,
            p.c.recycles
        );
    }
    o.push_str("</table>\n</body></html>\n");
    o
}
