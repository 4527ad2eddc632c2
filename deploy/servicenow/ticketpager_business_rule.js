/*
 * ticketpager — outbound webhook for ServiceNow incidents.
 *
 * Business Rule: Table = incident (or your task table), When = async, Insert + Update (optionally Delete),
 * Advanced = true, Condition: empty (filter in ticketpager's rules instead). Paste this as the script.
 *
 * Sends POST <endpoint> with the record's raw values (the same keys ticketpager's Table API poll reads),
 * signed as:  X-Signature: base64(HMAC-SHA256(secret, raw body)),  X-Timestamp: <epoch seconds>
 * (the body repeats the timestamp as "sent_at", so it is covered by the signature), or with
 * "Authorization: Bearer <token>" when x_ticketpager.bearer_token is set instead of a secret.
 *
 * System properties (sys_properties; make the two secrets type "password2" so they are stored encrypted):
 *   x_ticketpager.endpoint          https://ticketpager.example.com/webhooks/servicenow
 *   x_ticketpager.webhook_secret    same value as TICKETPAGER_SERVICENOW__WEBHOOK_SECRETS
 *   x_ticketpager.bearer_token      (alternative) one of TICKETPAGER_SERVICENOW__BEARER_TOKENS
 *   x_ticketpager.integration_user  the API user ticketpager writes work notes as (no webhook for those)
 *
 * Business rules do not fire for every write (imports, scripts calling setWorkflow(false)), so keep
 * ticketpager's polling enabled: it reconciles whatever this rule misses.
 */
(function executeRule(current, previous /* null in async rules */) {
    var endpoint = gs.getProperty('x_ticketpager.endpoint', '');
    var secret = gs.getProperty('x_ticketpager.webhook_secret', '');
    var token = gs.getProperty('x_ticketpager.bearer_token', '');
    var integrationUser = gs.getProperty('x_ticketpager.integration_user', 'ticketpager');
    if (!endpoint || (!secret && !token)) {
        gs.warn('ticketpager: x_ticketpager.endpoint and a secret or token must be set');
        return;
    }
    // ticketpager's own work notes must never come back as a change (echo loop)
    if (current.getValue('sys_updated_by') == integrationUser) {
        return;
    }

    var FIELDS = ['sys_id', 'number', 'short_description', 'description', 'state', 'priority', 'impact',
        'urgency', 'category', 'subcategory', 'active', 'opened_at', 'sys_created_on', 'sys_updated_on',
        'sys_updated_by', 'sys_mod_count'];
    var REFERENCES = ['assignment_group', 'assigned_to', 'caller_id', 'cmdb_ci', 'company'];

    var record = {};
    var i;
    for (i = 0; i < FIELDS.length; i++) {
        if (current.isValidField(FIELDS[i])) {
            record[FIELDS[i]] = current.getValue(FIELDS[i]) || '';  // raw values; dates are UTC
        }
    }
    for (i = 0; i < REFERENCES.length; i++) {
        var ref = REFERENCES[i];
        if (current.isValidField(ref)) {
            record[ref] = current.getValue(ref) || '';
            record[ref + '.name'] = record[ref] ? String(current[ref].name) : '';
        }
    }

    var sentAt = Math.floor(new GlideDateTime().getNumericValue() / 1000);
    var payload = {
        event: current.operation() == 'delete' ? 'delete' : (current.operation() == 'insert' ? 'insert' : 'update'),
        table: current.getTableName(),
        delivery_id: record.sys_id + ':' + record.sys_mod_count + ':' + record.sys_updated_on,
        sent_at: sentAt,
        instance: gs.getProperty('glide.servlet.uri'),
        record: record
    };
    // ASCII-only JSON: the bytes we sign are exactly the bytes sent, whatever the text encoding
    var body = JSON.stringify(payload).replace(/[\u007f-\uffff]/g, function (c) {
        return '\\u' + ('0000' + c.charCodeAt(0).toString(16)).slice(-4);
    });

    var request = new sn_ws.RESTMessageV2();
    request.setEndpoint(endpoint);
    request.setHttpMethod('post');
    request.setHttpTimeout(10000);
    request.setRequestHeader('Content-Type', 'application/json');
    request.setRequestHeader('X-Ticketpager-Delivery', payload.delivery_id);
    if (secret) {
        // generateMac wants the key base64-encoded and returns the MAC base64-encoded
        var signature = new GlideCertificateEncryption().generateMac(
            GlideStringUtil.base64Encode(secret), 'HmacSHA256', body);
        request.setRequestHeader('X-Signature', signature);
        request.setRequestHeader('X-Timestamp', String(sentAt));
    } else {
        request.setRequestHeader('Authorization', 'Bearer ' + token);
    }
    request.setRequestBody(body);
    try {
        var response = request.execute();
        var status = response.getStatusCode();
        if (status < 200 || status >= 300) {
            // never log the body or headers: they carry the signature / token
            gs.warn('ticketpager: webhook for ' + record.number + ' answered HTTP ' + status +
                ' (polling will reconcile)');
        }
    } catch (e) {
        gs.warn('ticketpager: webhook for ' + record.number + ' failed: ' + e.message + ' (polling will reconcile)');
    }
})(current, previous);
