"""Request size limits, checked before any work is done.

A request over a limit is rejected with INVALID_ARGUMENT naming the field;
nothing is truncated.  The README's Limits section lists the same numbers.
"""

MAX_ID_BYTES = 256          # account, subject, resource ids, request id
MAX_ACTION_BYTES = 256      # action and resource type
MAX_ROLES = 64
MAX_ATTRIBUTES = 64         # entries per map: subject, resource, context
MAX_KEY_BYTES = 128         # an attribute's key
MAX_VALUE_BYTES = 4096      # an attribute's value
MAX_REQUEST_BYTES = 64 * 1024   # a whole serialized request
MAX_BATCH_ITEMS = 1000         # requests in one AuthorizeBatch call
MAX_BATCH_BYTES = 1024 * 1024   # a whole serialized AuthorizeBatch request
