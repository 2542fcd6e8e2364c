#!/bin/sh
# The proxy image's entrypoint: fill in the template from the environment (only the FACTORY_
# values: nginx's own $variables stay), check the result, run nginx in the foreground.
set -eu
mkdir -p /tmp/nginx
envsubst '${FACTORY_PROXY_LISTEN} ${FACTORY_WEB_SERVERS} ${FACTORY_EVENTS_SERVERS} ${FACTORY_MAX_BODY}' \
  < /etc/nginx/factory.conf.template > /tmp/nginx/factory.conf
nginx -t -q
exec nginx -g 'daemon off;'
