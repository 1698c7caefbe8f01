-- Whether a widget's assets (a sticker picker's packs) are enabled, as
-- `widgets/set_assets_state` records it, per user and widget.
CREATE TABLE integrations_assets_state (
    user_id TEXT NOT NULL,
    widget_type TEXT NOT NULL,
    widget_id TEXT NOT NULL,
    state TEXT NOT NULL,
    updated_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, widget_type, widget_id)
);
