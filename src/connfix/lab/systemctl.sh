#!/bin/sh
# connfix lab: the systemctl stand-in of one lab host.
# The read-only verbs (show, is-active) are answered here in sh, as fast as the real
# systemctl; start, stop, restart and the rest go to connfix.lab.standin (Python).
HOST_DIR='@HOST_DIR@'
UNIT='@UNIT@'

main_pid() {
    pid=$(cat "$HOST_DIR/app.pid" 2>/dev/null) || { echo 0; return; }
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || { echo 0; return; }
    state=${stat##*) }
    state=${state%% *}
    case "$state" in Z|X|'') echo 0 ;; *) echo "$pid" ;; esac
}

fast() {
    verb=$1; shift
    props=''; value=0; unit=''
    while [ $# -gt 0 ]; do
        case "$1" in
            -p|--property) props="$props $(echo "$2" | tr ',' ' ')"; shift 2 ;;
            --value) value=1; shift ;;
            -*) return 1 ;;
            *) [ -n "$unit" ] && return 1; unit=$1; shift ;;
        esac
    done
    [ "$unit" = "$UNIT" ] || [ "$unit.service" = "$UNIT" ] || return 1
    pid=$(main_pid)
    if [ "$verb" = is-active ]; then
        [ -z "$props" ] || return 1
        if [ "$pid" != 0 ]; then echo active; exit 0; fi
        echo inactive; exit 3
    fi
    [ -n "$props" ] || return 1
    if [ "$pid" != 0 ]; then active=active; sub=running; else active=inactive; sub=dead; fi
    for prop in $props; do
        case "$prop" in
            LoadState) v=loaded ;; ActiveState) v=$active ;; SubState) v=$sub ;;
            MainPID) v=$pid ;; Id) v=$UNIT ;; *) v='' ;;
        esac
        if [ $value = 1 ]; then echo "$v"; else echo "$prop=$v"; fi
    done
    exit 0
}

case "$1" in
    show|is-active) fast "$@" ;;
esac
CONNFIX_LAB_DIR='@LAB_DIR@' CONNFIX_LAB_HOST='@HOST@' PYTHONPATH='@PYTHONPATH@' \
    exec '@PYTHON@' -m connfix.lab.standin "$@"
