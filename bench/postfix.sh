# postfix.sh - a private Postfix instance for the benchmarks (sourced by
# compare.sh and tls.sh): its configuration, queue and data directories are
# under the caller's scratch directory, never /etc/postfix's (which is only
# read), and it listens on 127.0.0.1 only.
#
# postfix_setup DIR SINK_PORT PORT [MAIN_CF_LINES]
#   DIR/etc: master.cf as installed, with the public smtp service moved to
#   127.0.0.1:PORT and chroot off (the queue directory is not prepared as a
#   chroot jail); postfix-files and dynamicmaps.cf so that meta_directory
#   can point there too; main.cf relaying example.com to
#   [127.0.0.1]:SINK_PORT over a connection cache, and nothing else, then
#   MAIN_CF_LINES. DIR/queue and DIR/data, the log in DIR/maillog. Checked
#   with "postfix check". False, with the reason in pf_why, when Postfix is
#   not installed or the instance does not check out.
#   Uses POSTFIX, POSTCONF and the scratch directory $work.
postfix_setup() {
    local d=$1 sp=$2 pp=$3 extra=${4:-} x
    pf_why=""
    for x in "$POSTFIX" "$POSTCONF"; do
        [ -x "$x" ] || { pf_why="$x not installed"; return 1; }
    done
    if ! getent passwd postfix >/dev/null || ! getent group postdrop >/dev/null; then
        pf_why="no postfix user or postdrop group"; return 1
    fi
    mkdir -p "$d/etc" "$d/queue" "$d/data"
    chown postfix "$d/data"
    cp /etc/postfix/master.cf "$d/etc/"
    for x in postfix-files postfix-files.d dynamicmaps.cf dynamicmaps.cf.d; do
        [ -e "/etc/postfix/$x" ] && cp -r "/etc/postfix/$x" "$d/etc/"
    done
    cat > "$d/etc/main.cf" <<EOT
compatibility_level = 3.6
config_directory = $d/etc
meta_directory = $d/etc
queue_directory = $d/queue
data_directory = $d/data
mail_owner = postfix
setgid_group = postdrop
myhostname = pf.bench
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains = example.com
transport_maps = inline:{ example.com=relay:[127.0.0.1]:$sp }
smtp_connection_cache_on_demand = yes
default_process_limit = 120
smtpd_relay_restrictions = permit_auth_destination, reject
alias_maps =
alias_database =
local_recipient_maps =
biff = no
maillog_file = $d/maillog
maillog_file_prefixes = $d
EOT
    [ -z "$extra" ] || printf '%s\n' "$extra" >> "$d/etc/main.cf"
    if ! { "$POSTCONF" -c "$d/etc" -MX smtp/inet &&
           "$POSTCONF" -c "$d/etc" -M "127.0.0.1:$pp/inet = 127.0.0.1:$pp inet n - n - - smtpd" &&
           "$POSTCONF" -c "$d/etc" -F '*/*/chroot = n'; } > "$work/postconf.out" 2>&1; then
        pf_why="postconf failed: $(tail -1 "$work/postconf.out")"; return 1
    fi
    if ! timeout 60 "$POSTFIX" -c "$d/etc" check > "$work/pfcheck.out" 2>&1; then
        pf_why="postfix check failed: $(tail -1 "$work/pfcheck.out")"; return 1
    fi
}
