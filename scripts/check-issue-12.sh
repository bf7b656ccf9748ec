#!/usr/bin/env bash
# check-issue-12.sh -- the "done when" of issue 12, from a NON-editable install.
# Usage: bash scripts/check-issue-12.sh /path/to/venv-with-cluster-agent   (pip install '.[inspect]', not -e)
# Everything happens in a fresh temporary HOME; nothing outside it is touched.
set -u
VENV=${1:?give the venv}; CA=$VENV/bin/cluster-agent
W=$(mktemp -d /tmp/issue12-check.XXXXXX); export HOME=$W/home; mkdir -p "$HOME"; cd "$W"
unset XDG_CONFIG_HOME CLUSTER_AGENT_CONFIG_PATH CLUSTER_AGENT_CONFIG_MEMO XDG_CACHE_HOME HF_DATASETS_CACHE HF_HOME
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
fail=0; ok() { echo "  ok: $*"; }; bad() { echo "  FAIL: $*"; fail=1; }
echo "installed at: $("$VENV/bin/python" -c 'import agent; print(agent.__file__)')"
EX=$("$VENV/bin/python" -c 'import agent.config as c; print(c.EXAMPLE_SUMMARY.parent)')
for e in a b; do cp -r "$EX" "$e"; done
profile() { mkdir -p "$1/site"; printf 'defaults: [local, _self_]\nname: %s\nhf_cache: %s/roots/%s/hf\nxdg_cache_home: %s/roots/%s/xdg\n' "$2" "$W" "$2" "$W" "$2" > "$1/site/$2.yaml"; }
profile "$HOME/.config/cluster-agent" mylab     # $XDG_CONFIG_HOME/cluster-agent
profile "$W/labshare" labsite                   # CLUSTER_AGENT_CONFIG_PATH
profile "$W/cd" cdsite                          # --config-dir
export CLUSTER_AGENT_CONFIG_PATH=$W/labshare
echo "1. a site profile from each search-path location, used by site=NAME (files under its cache roots)"
for spec in "mylab:" "labsite:" "cdsite:-cd $W/cd"; do
  site=${spec%%:*}; extra=${spec#*:}
  $CA $extra experiment=a site=$site manifest=$site.json verify=false >/dev/null 2>"$W/$site.err" || bad "site=$site exit $?"
  n=$(find "$W/roots/$site" -name '*.arrow' 2>/dev/null | wc -l)
  [ "$n" -gt 0 ] && ok "site=$site: $n Arrow files under $W/roots/$site (HF + inspect layers)" || bad "site=$site: nothing under its roots"
done
[ ! -e "$HOME/.cache/huggingface" ] && ok "nothing went to the default HF cache" || bad "default HF cache used"
echo "2. -m experiment=a.yaml,b.yaml site=local,mylab makes four manifests"
rm -rf a/.cluster-agent b/.cluster-agent
$CA -m experiment=a/experiment_summary.yaml,b/experiment_summary.yaml site=local,mylab verify=false 2>/dev/null | tail -5
n=$(find a b -name manifest.json | wc -l); [ "$n" = 4 ] && ok "$n manifests: $(find a b -name manifest.json | tr '\n' ' ')" || bad "$n manifests"
echo "3. every + typo of the issue is exit 2"
for o in +site.hf_cach=/x +policy.mod=stop +site.slurm.acount=lab; do
  msg=$($CA "$o" 2>&1 >/dev/null); rc=$?; [ $rc = 2 ] && ok "$o -> exit 2: $msg" || bad "$o -> exit $rc"
done
echo "4. every output=json error is one JSON document"
for args in "+site.hf_cach=/x" "site=nope" "hydra.nonsense=1" "hydra.run.dir=/x" "experiment=/nonexistent.yaml" "--cfg all" "~site.umask" "experiment=$W" "action=check manifest=../../x.json" "-m site=local,nope action=plan"; do
  out=$($CA $args output=json 2>/dev/null); rc=$?
  echo "$out" | "$VENV/bin/python" -c 'import json,sys; d=json.loads(sys.stdin.read()); assert d["exit"]==2 and (d.get("error") or d.get("runs"))' 2>/dev/null \
    && ok "$args -> exit $rc, $out" || bad "$args -> exit $rc, stdout: $out"
done
echo "5. output=shell outside action=check"
out=$($CA experiment=a action=plan output=shell 2>/dev/null); rc=$?
[ $rc = 2 ] && [ -z "$out" ] && ok "action=plan output=shell -> exit 2, nothing on stdout" || bad "output=shell -> exit $rc: $out"
rm -rf "$W"; [ $fail = 0 ] && echo "ALL OK" || echo "SOME CHECKS FAILED"; exit $fail
