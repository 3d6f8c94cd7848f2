#!/bin/sh
# Entrypoint of the nginx stand-in (build.sh), doing what the nginx image's does for
# this project: each /etc/nginx/templates/NAME.template becomes /etc/nginx/conf.d/NAME
# with ${VAR} replaced for the variables set in the environment only, so nginx's own
# $host or $uri stay as they are. Then it runs the command (nginx by default).
set -eu
templates=/etc/nginx/templates
if [ -d "$templates" ]; then
    # "${A} ${B} …" for every variable set: envsubst replaces only those.
    defined=$(env | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/${\1}/p' | tr '\n' ' ')
    for template in "$templates"/*.template; do
        [ -e "$template" ] || continue
        name=$(basename "$template" .template)
        envsubst "$defined" < "$template" > "/etc/nginx/conf.d/$name"
        echo "docker-entrypoint.sh: wrote /etc/nginx/conf.d/$name from $template" >&2
    done
fi
exec "$@"
